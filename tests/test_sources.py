"""Frame sources: each kind opens, yields RGB frames in order, skips unreadable ones, fails clearly."""
from __future__ import annotations

import time

import numpy as np
import pytest

from sfda_deploy.data.sources import open_source
from sfda_deploy.errors import SfdaError
from tests.runtime_data import make_images, make_video


def _frames(source):
    return [(frame, info) for frame, info in source]


def test_image_dir_glob_list(tmp_path):
    paths = make_images(tmp_path / "imgs", n=3)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    single = _frames(open_source(str(paths[1])))
    assert [i.name for _, i in single] == ["img1"]
    assert single[0][0].shape == (40, 60, 3) and single[0][0].dtype == np.uint8
    for spec in (str(tmp_path / "imgs"), str(tmp_path / "imgs" / "*.png")):
        src = open_source(spec)
        assert src.kind == "images" and src.total == 3 and src.fps is None
        assert [i.name for _, i in _frames(src)] == ["img0", "img1", "img2"]
    lst = tmp_path / "list.txt"
    lst.write_text("# frames\nimgs/img2.png\n\n" + str(paths[0]) + "\n")  # relative to the list, absolute
    assert [i.name for _, i in _frames(open_source(str(lst)))] == ["img2", "img0"]


def test_image_is_rgb(tmp_path):
    import cv2

    bgr = np.zeros((8, 8, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's BGR
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    (frame, _), = _frames(open_source(str(tmp_path / "blue.png")))
    assert frame[0, 0].tolist() == [0, 0, 255]


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    make_images(tmp_path / "imgs", n=2)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    src = open_source(str(tmp_path / "imgs"))
    assert [i.name for _, i in _frames(src)] == ["img0", "img1"]
    assert src.unreadable == 1


def test_video_order_stride_and_max_frames(tmp_path):
    video = make_video(tmp_path / "v.mp4", n=10, fps=12.0)
    src = open_source(str(video))
    assert (src.kind, src.total, src.fps, tuple(src.size)) == ("video", 10, 12.0, (48, 80))
    frames = _frames(src)
    assert [i.index for _, i in frames] == list(range(10))
    levels = [float(f.mean()) for f, _ in frames]
    assert levels == sorted(levels) and abs(levels[3] - 60) < 4  # frame i is grey 20*i
    strided = _frames(open_source(str(video), vid_stride=3))
    assert [round(float(f.mean()) / 20) for f, _ in strided] == [0, 3, 6, 9]
    assert [i.timestamp for _, i in strided] == [0.0, 0.25, 0.5, 0.75]  # seconds at 12 fps
    limited = open_source(str(video), max_frames=4)
    assert limited.total == 4 and len(_frames(limited)) == 4


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist"),
    (b"", "cannot be opened"),
    (b"\x00\x00\x00\x18ftypmp42 truncated", "cannot be opened"),
])
def test_bad_video_files(tmp_path, content, fragment):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SfdaError, match=fragment):
        open_source(str(path))


def test_truncated_video(tmp_path):
    data = make_video(tmp_path / "v.mp4", n=12).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # mp4v: the index (moov) is at the end
    with pytest.raises(SfdaError, match="truncated"):
        open_source(str(tmp_path / "cut.mp4"))


def test_not_media_empty_dir_and_bad_flags(tmp_path):
    (tmp_path / "data.bin").write_bytes(b"definitely not media" * 10)
    with pytest.raises(SfdaError, match="not a readable image or video"):
        open_source(str(tmp_path / "data.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SfdaError, match="has no images"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(SfdaError, match="matches no images"):
        open_source(str(tmp_path / "empty" / "*.png"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(SfdaError, match="names no files"):
        open_source(str(tmp_path / "empty.txt"))
    with pytest.raises(SfdaError, match="--vid-stride"):
        open_source(str(tmp_path), vid_stride=0)


def test_silent_stream_times_out():
    # a server that accepts the connection (the kernel's backlog does) and never answers: the open
    # must give up after the timeout with one clear error, not hang the command
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/stream.mjpg"
        start = time.time()
        with pytest.raises(SfdaError, match=r"stream .* is unreachable \(no answer within 1.5 s\): check the address"):
            open_source(url, timeout=1.5)
        waited = time.time() - start
    assert 1.0 <= waited < 10, waited  # it did wait for an answer (a refused port fails at once), then stopped


def test_unreachable_stream_times_out(tmp_path):
    start = time.time()
    with pytest.raises(SfdaError, match="unreachable"):
        open_source("rtsp://127.0.0.1:9/none", timeout=3.0)  # port 9 (discard): nothing listens
    assert time.time() - start < 10
