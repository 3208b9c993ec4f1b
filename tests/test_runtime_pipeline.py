"""The threaded pipeline: every frame once, in order; errors and Ctrl-C stop it cleanly."""
from __future__ import annotations

import inspect
import random
import threading
import time

import numpy as np
import pytest

from sfda_deploy.data.sources import FrameInfo
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.runtime.pipeline import run_pipeline, stream_inference
from sfda_deploy.runtime.render import VideoSink
from tests.runtime_data import video_info


class ListSource:
    """``n`` frames whose pixels all equal the frame index; decoding takes a random short time."""

    live = False

    def __init__(self, n):
        self.n, self.unreadable = n, 0

    def __iter__(self):
        for i in range(self.n):
            time.sleep(random.random() * 0.002)
            yield np.full((6, 8, 3), i, np.uint8), FrameInfo(i, f"f{i}")


class EchoBackend:
    """Label map = the frame's value; inference takes a random short time; optional Ctrl-C."""

    batch, input_size, meta = 1, (3, 4), ModelMeta(arch="tiny")

    def __init__(self, interrupt_at=None):
        self.calls, self.interrupt_at = 0, interrupt_at

    def preprocess(self, frames):
        return np.stack([f[:3, :4, 0] for f in frames])

    def infer(self, x):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        time.sleep(random.random() * 0.002)
        return x.copy()


class RecordingSink:
    def __init__(self, fail_at=None):
        self.seen, self.fail_at, self.threads = [], fail_at, set()

    def postprocess(self, pred):
        return int(pred.mask[0, 0])

    def encode(self, pred, value):
        self.threads.add(threading.current_thread().name)
        if len(self.seen) == self.fail_at:
            raise OSError("disk full")
        self.seen.append((pred.info.index, value, pred.mask.shape))


@pytest.mark.parametrize("batch", [1, 3])
def test_every_frame_once_in_order(batch):
    random.seed(batch)
    sink = RecordingSink()
    result = run_pipeline(ListSource(23), EchoBackend(), sink, batch=batch, queue_size=4)
    assert result.frames == 23 and not result.partial
    assert sink.seen == [(i, i, (6, 8)) for i in range(23)]  # order kept, label resized to the frame
    assert sink.threads == {"encode"}  # encoding runs on the writer thread
    ms = result.times.ms_per_frame()
    assert set(ms) == {"decode", "preprocess", "infer", "postprocess", "encode"}
    assert result.times.frames["infer"] == 23 and result.times.frames["encode"] == 23


class EndlessSource:
    """Frames without end (a camera); counts how many were pulled."""

    live = False

    def __init__(self):
        self.pulled, self.unreadable = 0, 0

    def __iter__(self):
        while True:
            self.pulled += 1
            yield np.full((6, 8, 3), self.pulled - 1, np.uint8), FrameInfo(self.pulled - 1, "f")


def test_stream_inference_is_a_generator():
    preds = list(stream_inference(ListSource(5), EchoBackend()))
    assert [int(p.labels[0, 0]) for p in preds] == [0, 1, 2, 3, 4]


def test_stream_inference_is_lazy():
    # nothing runs before the first next(); then one batch is inferred and the reader stays within its
    # queue of an endless source; closing the generator stops the reader thread
    source, backend = EndlessSource(), EchoBackend()
    stream = stream_inference(source, backend, queue_size=2)
    assert inspect.isgenerator(stream)
    time.sleep(0.05)
    assert source.pulled == 0 and backend.calls == 0
    assert int(next(stream).labels[0, 0]) == 0 and backend.calls == 1
    time.sleep(0.2)  # let the reader run ahead as far as it can
    assert 1 <= source.pulled <= 1 + 2 + 1  # taken + a full queue + one waiting to be queued
    assert [int(next(stream).labels[0, 0]) for _ in range(3)] == [1, 2, 3] and backend.calls == 4
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "decode"]


def test_writer_error_stops_the_pipeline():
    sink = RecordingSink(fail_at=4)
    with pytest.raises(OSError, match="disk full"):
        run_pipeline(ListSource(200), EchoBackend(), sink, queue_size=2)
    assert len(sink.seen) == 4
    assert not [t for t in threading.enumerate() if t.name in ("decode", "encode")]  # threads ended


def test_ctrl_c_finishes_a_playable_partial_video(tmp_path):
    class VideoOut:
        def __init__(self):
            self.video = VideoSink(tmp_path / "out.mp4", 10.0, (6, 8))

        def postprocess(self, pred):
            return None

        def encode(self, pred, _):
            self.video.write(np.repeat(pred.mask[..., None] * 20, 3, axis=2))

    out = VideoOut()
    result = run_pipeline(ListSource(50), EchoBackend(interrupt_at=8), out)
    path = out.video.close()
    assert result.partial and result.frames == 7  # inferred before the interrupt, all encoded
    frames, fps, size, _ = video_info(path)
    assert (frames, fps, size) == (7, 10.0, (6, 8))
    assert not list(tmp_path.glob(".*partial*"))  # the temporary name is gone
