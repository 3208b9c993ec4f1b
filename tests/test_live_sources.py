"""Issue 31: live sources that drop, stall and come back, against a real MJPEG server on 127.0.0.1
(``tests.mjpeg_server``; OpenCV's FFmpeg backend reads it as IP cameras are read). Every loop is bounded
in frames and every wait in seconds."""
from __future__ import annotations

import json
import threading
import time

import pytest

from sfda_deploy.data.live import BACKOFF_S, LinkStats, ReconnectPolicy
from sfda_deploy.data.sources import open_source
from sfda_deploy.errors import SfdaError
from tests.mjpeg_server import MjpegServer, Outage, read_serial, serial_frame
from tests.runtime_data import make_checkpoint


def _read(source, frames: int, seconds: float = 60.0):
    """Up to ``frames`` frames (serial, arrival time) from ``source`` within ``seconds``; the log lines with
    their times."""
    got, lines = [], []
    source.log = lambda line: lines.append((time.monotonic(), line))
    deadline = time.monotonic() + seconds
    for frame, _ in source:
        got.append((read_serial(frame), time.monotonic()))
        if len(got) >= frames or time.monotonic() > deadline:
            break
    source.close()
    return got, lines


def _gap(got):
    """(last arrival before the longest gap, first arrival after it)."""
    i = max(range(1, len(got)), key=lambda k: got[k][1] - got[k - 1][1])
    return got[i - 1][1], got[i][1]


# ------------------------------------------------------------------------------------ the arithmetic
def test_backoff_schedule_and_the_default_give_up_time():
    policy = ReconnectPolicy()
    assert [policy.delay(k) for k in range(1, 8)] == [1, 2, 4, 8, 8, 8, 8]
    assert [policy.allows(k) for k in (1, 5, 6)] == [True, True, False]
    assert ReconnectPolicy(tries=-1).allows(10_000) and not ReconnectPolicy(tries=0).allows(1)
    # defaults: 2 s without a frame, then 5 tries 1+2+4+8+8 s apart: gives up after ~25 s (+ the opens)
    assert policy.after_s + sum(policy.delay(k) for k in range(1, policy.tries + 1)) == 25.0
    assert BACKOFF_S == (1.0, 2.0, 4.0, 8.0)
    with pytest.raises(SfdaError, match="--reconnect-after must be > 0"):
        ReconnectPolicy(after_s=0)
    with pytest.raises(SfdaError, match="--reconnect-tries must be -1"):
        ReconnectPolicy(tries=-2)


def test_frames_lost_are_the_frames_the_rate_would_have_sent_in_the_gap():
    stats = LinkStats()
    assert stats.add_gap(1.0, 0.1) == 9        # 10 intervals of 0.1 s: 9 frames between the two received
    assert stats.add_gap(0.34, 0.1) == 2       # round(3.4) - 1
    assert stats.add_gap(5.0, None) == 0       # no rate known (a drop right after the first frame)
    assert (stats.frames_lost, stats.longest_gap_s) == (11, 5.0)


def test_the_test_server_frames_carry_their_serial_through_jpeg():
    import cv2

    for serial in (0, 1, 2, 37, 1000, 65535):
        ok, jpeg = cv2.imencode(".jpg", serial_frame(serial), [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert read_serial(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)) == serial


# ------------------------------------------------------------------------------------ real stream
def test_a_5_s_drop_reconnects_within_5_s_of_the_return_each_frame_once():
    with MjpegServer(fps=10, outages=(Outage(15, 5.0, "down"),)) as server:
        source = open_source(server.url)
        got, lines = _read(source, 40)
        returned = server.returned_at[0]
    serials = [s for s, _ in got]
    assert len(got) == 40 and serials == sorted(set(serials))  # every frame once, in order
    before, after = _gap(got)
    assert after - before >= 4.9                     # the outage was seen whole
    assert after - returned <= 5.0, after - returned  # back within 5 s of the stream's return
    link = source.link
    assert (link.drops, link.reconnects, link.gave_up) == (1, 1, False)
    assert link.longest_gap_s == pytest.approx(after - before, abs=0.01)
    assert 30 <= link.frames_lost <= 80  # ~5 s at 10 fps, estimated from the rate seen before the drop
    assert [("no frame for 2 s (drop 1)" in text, "reconnected on try" in text) for _, text in lines] == [
        (True, False), (False, True)]


def test_a_stall_without_error_is_caught_by_the_watchdog_not_waited_out():
    # the connection stays open and silent: the capture's own read timeout is 10 s, the watchdog's 1 s
    with MjpegServer(fps=10, outages=(Outage(10, 3.0, "stall"),)) as server:
        source = open_source(server.url, reconnect=ReconnectPolicy(after_s=1.0))
        got, lines = _read(source, 30)
        returned = server.returned_at[0]
    before, after = _gap(got)
    dropped_at = lines[0][0]
    assert "drop 1" in lines[0][1] and 0.9 <= dropped_at - before < 2.0  # seen during the stall
    assert dropped_at < returned
    assert source.link.reconnects == 1 and after - returned <= 5.0
    serials = [s for s, _ in got]
    assert serials == sorted(set(serials))


def test_a_stream_that_does_not_come_back_is_given_up_and_the_frames_end():
    with MjpegServer(fps=10, outages=(Outage(5, 120.0, "down"),)) as server:
        source = open_source(server.url, reconnect=ReconnectPolicy(after_s=0.5, tries=2))
        start = time.monotonic()
        got, lines = _read(source, 1000)
        took = time.monotonic() - start
    assert len(got) == 6 and 3.0 <= took < 15  # 0.5 s + 1 s + 2 s of backoff, the opens refused at once
    assert (source.link.drops, source.link.reconnects, source.link.gave_up) == (1, 0, True)
    assert "gave up after 2 tries" in lines[-1][1] and len(lines) == 2


def test_cancel_ends_a_source_that_would_retry_forever():
    with MjpegServer(fps=10, outages=(Outage(3, 120.0, "down"),)) as server:
        source = open_source(server.url, reconnect=ReconnectPolicy(after_s=0.5, tries=-1))
        done = threading.Event()
        reader = threading.Thread(target=lambda: (_read(source, 1000, 60), done.set()), daemon=True)
        reader.start()
        time.sleep(3.0)
        assert not done.is_set()  # still retrying
        cancelled = time.monotonic()
        source.cancel()
        assert done.wait(10) and time.monotonic() - cancelled < 10
    assert source.link.drops == 1 and not source.link.gave_up


def test_a_file_never_reconnects(tmp_path):
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(tmp_path / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 16))
    for i in range(4):
        writer.write(np.full((16, 32, 3), 40 * i, np.uint8))
    writer.release()
    source = open_source(str(tmp_path / "v.avi"))
    assert len(list(source)) == 4 and source.link is None and not source.live


# ------------------------------------------------------------------------------------ through the CLI
@pytest.mark.slow
def test_segment_a_stream_that_drops_for_5_s(invoke, tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    with MjpegServer(fps=10, outages=(Outage(20, 5.0, "down"),)) as server:
        r = invoke(["segment", server.url, "--model", ckpt, "--save-masks", "--max-frames", 60])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "segment" / "segment"
    s = json.loads((run / "summary.json").read_text())
    link = s["reconnect"]
    assert (link["drops"], link["reconnects"], link["gave_up"], link["after_s"], link["tries"]) == (1, 1, False, 2.0, 5)
    assert link["frames_lost"] > 0 and link["longest_gap_s"] >= 4.9
    masks = sorted(p.stem for p in (run / "masks").glob("*.png"))
    indices = [f["index"] for f in s["per_frame"]]
    assert len(masks) == s["frames"] == len(set(indices)) == len(indices)  # a mask per frame, none twice
    assert s["frames"] + s["dropped_frames"] == 60  # every frame received was segmented or dropped (lag)
    log = (run / "log.txt").read_text()
    assert "(drop 1): reconnecting" in log and "reconnected on try" in log
    assert "live source: 1 drop, 1 reconnect" in r.output
