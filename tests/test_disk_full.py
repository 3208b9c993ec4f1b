"""Issue 31: a disk that fills up, writer by writer (masks, overlay video, checkpoints, ONNX).

Where this machine lets the test mount a small tmpfs (root), the disk is real and really full; everywhere
ENOSPC is also injected at each writer's own write call, so every writer is covered on every machine.
The contract: one line naming the file, its folder, the free space and the size of the failed write;
no file under a final name that is not whole; no temporary left.
"""
from __future__ import annotations

import errno
import json
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sfda_deploy import disk, runs
from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.disk import DiskFullError, format_bytes
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.runtime.render import VideoSink
from tests.runtime_data import make_checkpoint, make_images

MIB = 1 << 20


def _try_mount(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, timeout=30)
    return p.returncode == 0


@contextmanager
def small_disk(folder: Path, size: int = MIB):
    """A ``size``-byte tmpfs mounted at ``folder`` for the block; skips (saying why) where mount is refused."""
    if not _try_mount(folder, size):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN) here; the injected-ENOSPC tests cover the writers")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


def fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system until about ``leave`` bytes are free."""
    free = disk.free_bytes(folder)
    if free > leave:
        (folder / f"filler-{uuid.uuid4().hex}").write_bytes(b"\0" * (free - leave))


def _no_temporaries(folder: Path) -> None:
    assert not [p for pattern in runs.TEMPORARY_GLOBS for p in folder.rglob(pattern)]


def _enospc(*_args, **_kw):
    raise OSError(errno.ENOSPC, "No space left on device")


# --------------------------------------------------------------------------------- the message
def test_the_line_names_file_folder_free_space_and_size(tmp_path):
    e = DiskFullError(tmp_path / "model.onnx", 3 * MIB + MIB // 2)
    free = format_bytes(disk.free_bytes(tmp_path))
    assert str(e) == (f"the disk is full: writing model.onnx (3.5 MiB) into {tmp_path} failed with {free} free: "
                      "free some space or write elsewhere (SFDA_RUNS_DIR=/path)")
    assert [format_bytes(n) for n in (0, 1023, 1024, 1536, 5 * MIB, 3 << 30)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 GiB"]
    assert "(at least 10 B)" in str(DiskFullError(tmp_path / "x", 10, "at least "))


# --------------------------------------------------------------------------------- injected, every machine
def test_checkpoint_writer_injected(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "write_bytes", _enospc)
    model = build_model("tiny", num_classes=19)
    with pytest.raises(DiskFullError, match=r"writing model.safetensors \(\d+\.\d KiB\) into ") as caught:
        save_checkpoint(tmp_path / "model.safetensors", model, ModelMeta(arch="tiny", input_size=(32, 32)))
    n_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert caught.value.size > n_bytes  # the tensors plus the header
    assert list(tmp_path.iterdir()) == []


def test_onnx_writer_injected(tmp_path, monkeypatch):
    import onnx

    from sfda_deploy.export.onnx import save_onnx
    from tests.runtime_data import make_onnx

    proto = onnx.load(str(make_onnx(tmp_path / "src.onnx")))
    monkeypatch.setattr(disk, "open", lambda *a, **k: _Refusing(), raising=False)
    with pytest.raises(DiskFullError, match=r"writing model.onnx \(\d+\.\d KiB\) into ") as caught:
        with runs.atomic_path(tmp_path / "out" / "model.onnx") as tmp:
            save_onnx(proto, ModelMeta(arch="tiny", input_size=(32, 32)), tmp)
    assert caught.value.size > 1000 and list((tmp_path / "out").iterdir()) == []


class _Refusing:
    """A file whose every write fails with ENOSPC."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    write = staticmethod(_enospc)


def test_video_writer_injected(tmp_path, monkeypatch):
    import sfda_deploy.runtime.render as render

    sink = VideoSink(tmp_path / "overlay.mp4", 10.0, (32, 48))
    real, written = sink.writer, []

    class Filling:  # OpenCV's writer answers False once FFmpeg cannot write
        def write(self, frame):
            written.append(1)
            return len(written) <= 3 and (real.write(frame) is not False)

        def release(self):
            real.release()

    sink.writer = Filling()
    monkeypatch.setattr(render, "free_bytes", lambda _folder: 0)
    frame = np.zeros((32, 48, 3), np.uint8)
    for _ in range(3):
        sink.write(frame)
    with pytest.raises(DiskFullError, match=r"writing overlay.mp4 \(frame of up to 4.5 KiB\) into .* failed with .* free"):
        sink.write(frame)
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_adapt_state_writer_injected(tmp_path, monkeypatch):
    """``last.pt`` (the resumable state) goes through ``disk.write_all`` like the ONNX."""
    from sfda_deploy.adapt import loop_state

    monkeypatch.setattr(disk, "open", lambda *a, **k: _Refusing(), raising=False)
    with pytest.raises(DiskFullError, match=r"writing last.pt \(\d+ B\)"):
        with runs.atomic_path(tmp_path / loop_state.CHECKPOINT) as tmp:
            disk.write_all(tmp, b"\0" * 700)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------- a real full tmpfs
def test_checkpoint_and_onnx_on_a_full_tmpfs(tmp_path):
    import onnx

    from sfda_deploy.export.onnx import save_onnx
    from tests.runtime_data import make_onnx

    proto = onnx.load(str(make_onnx(tmp_path / "src.onnx")))
    with small_disk(tmp_path / "disk") as root:
        fill(root, 8 * 1024)
        torch.manual_seed(0)
        with pytest.raises(DiskFullError, match=r"writing model.safetensors .* into .*/disk failed with \d+ B free"):
            save_checkpoint(root / "model.safetensors", build_model("tiny", num_classes=19),
                            ModelMeta(arch="tiny", input_size=(32, 32)))
        with pytest.raises(DiskFullError, match=r"writing model.onnx \(\d+\.\d KiB\) into .*/disk failed"):
            with runs.atomic_path(root / "model.onnx") as tmp:
                save_onnx(proto, ModelMeta(arch="tiny", input_size=(32, 32)), tmp)
        assert sorted(p.name for p in root.iterdir() if not p.name.startswith("filler")) == []


def test_video_on_a_full_tmpfs(tmp_path):
    rng = np.random.default_rng(0)
    with small_disk(tmp_path / "disk", 512 * 1024) as root:
        sink = VideoSink(root / "overlay.mp4", 30.0, (128, 256))
        with pytest.raises(DiskFullError, match=r"writing overlay.mp4 \(frame of up to 96.0 KiB\) into .*/disk"):
            for _ in range(500):  # noise does not compress: ~0.5 MiB is reached within a few dozen frames
                sink.write(rng.integers(0, 256, (128, 256, 3), np.uint8))
        assert 0 < sink.frames < 500
        sink.abort()
        assert list(root.iterdir()) == []


@pytest.mark.slow
def test_segment_on_a_full_tmpfs_keeps_whole_files_and_marks_the_run_failed(invoke, tmp_path, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    images = make_images(tmp_path / "imgs", n=40, size=(96, 128))[0].parent  # noise: ~37 KiB per overlay PNG
    with small_disk(tmp_path / "disk", MIB) as root:
        monkeypatch.setenv("SFDA_RUNS_DIR", str(root / "runs"))
        fill(root, 200 * 1024)  # room for a few overlays and masks, not for 40
        r = invoke(["segment", images, "--model", ckpt, "--save-masks"])
        assert r.exit_code == 2, r.output
        line = r.stderr.strip().splitlines()[-1]
        run = root / "runs" / "segment" / "segment"
        assert line.startswith("error: the disk is full: writing img") and f"into {run}/" in line
        overlays, masks = sorted((run / "overlays").glob("*.png")), sorted((run / "masks").glob("*.png"))
        assert 0 < len(overlays) < 40 and len(masks) in (len(overlays), len(overlays) - 1)
        assert all(cv2.imread(str(p)).shape == (96, 128, 3) for p in overlays)  # each one whole
        assert all(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == (96, 128) for p in masks)
        _no_temporaries(run)
        assert runs.run_status(run)[0] == "failed"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["masks_written"] == len(masks) and summary["failed"] == line[len("error: "):]
