"""Threaded inference: decode → bounded queue → batch + preprocess + infer → postprocess + encode.

Decoding runs on a reader thread and postprocessing/encoding on a writer thread, so both overlap with
inference (OpenCV, torch and ONNX Runtime release the GIL while they work). Every stage is timed.

Python use, without writing anything (a generator, like Ultralytics' ``stream_inference``)::

    backend = load_backend("model.onnx")
    for pred in stream_inference(open_source("video.mp4"), backend):
        pred.mask  # uint8 [H,W] class ids at the frame's size
"""
from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Iterator, Optional, Protocol

import numpy as np

from sfda_deploy.data.sources import FrameInfo, Source
from sfda_deploy.runtime.letterbox import Letterbox, check_resize_mode, fit_frames, pad_colour, unletterbox
from sfda_deploy.runtime.render import resize_labels

STAGES = ("decode", "preprocess", "infer", "postprocess", "encode")
_END = object()


@dataclass
class Prediction:
    """One frame's result. ``frame``: RGB uint8 ``[H,W,3]``; ``labels``: uint8 ``[h,w]`` at the model's size;
    ``box``: where the frame was letterboxed into the model's input (None: stretched)."""

    frame: np.ndarray
    labels: np.ndarray
    info: FrameInfo
    box: Optional[Letterbox] = None

    @cached_property
    def mask(self) -> np.ndarray:
        """Class ids uint8 ``[H,W]`` at the frame's size (padding cropped, nearest-neighbour resize)."""
        if self.box is not None:
            return unletterbox(self.labels, self.box)
        return resize_labels(self.labels, self.frame.shape[:2])


@dataclass
class StageTimes:
    """Seconds spent per stage and frames seen per stage (thread-safe), plus dropped frames."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    frames: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dropped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float, frames: int = 1) -> None:
        with self._lock:
            self.seconds[stage] += seconds
            self.frames[stage] += frames

    def ms_per_frame(self) -> dict[str, float]:
        return {s: round(1000.0 * self.seconds[s] / self.frames[s], 3) if self.frames[s] else 0.0
                for s in STAGES}


class _Error:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _reader(source: Source, out: queue.Queue, stop: threading.Event, times: StageTimes) -> None:
    """Decode frames into ``out``; live sources drop the oldest queued frame rather than lag behind."""
    try:
        frames = iter(source)
        while not stop.is_set():
            start = time.perf_counter()
            item = next(frames, _END)
            if item is _END:
                break
            times.add("decode", time.perf_counter() - start)
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    if source.live:  # real time: the newest frame matters, not the backlog
                        try:
                            out.get_nowait()
                            times.dropped += 1
                        except queue.Empty:
                            pass
    except BaseException as e:  # handed to the consumer, which re-raises it in its own thread
        out.put(_Error(e))
    finally:
        out.put(_END)


def _next_batch(q: queue.Queue, size: int, live: bool) -> tuple[list, bool]:
    """Up to ``size`` items; files wait for a full batch, live sources take what is there."""
    items, ended = [], False
    while len(items) < size:
        if items and live:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
        else:
            item = q.get()
        if item is _END:
            ended = True
            break
        if isinstance(item, _Error):
            raise item.exc
        items.append(item)
    return items, ended


def stream_inference(source: Source, backend, batch: Optional[int] = None, queue_size: int = 16,
                     times: Optional[StageTimes] = None, resize: str = "letterbox",
                     adapter: Optional[Adapter] = None) -> Iterator[Prediction]:
    """Yield a ``Prediction`` per frame of ``source``, in order. Decoding runs on its own thread.

    Args:
        source: an opened ``Source``.
        backend: a ``Backend`` (``load_backend``).
        batch: frames per inference call (default: the backend's batch).
        queue_size: decoded frames buffered ahead of inference.
        times: filled with decode/preprocess/infer seconds when given.
        resize: ``letterbox`` (keep the aspect, pad with the mean colour) or ``stretch``.
        adapter: called with each batch's network input once it is inferred (online adaptation); its
            time is not counted as ``infer``.
    """
    times = times if times is not None else StageTimes()
    fill = pad_colour(backend.meta) if check_resize_mode(resize) == "letterbox" else ()
    size = batch or backend.batch
    q: queue.Queue = queue.Queue(maxsize=max(queue_size, size))
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(source, q, stop, times), daemon=True, name="decode")
    reader.start()
    try:
        ended = False
        while not ended:
            items, ended = _next_batch(q, size, source.live)
            if not items:
                continue
            start = time.perf_counter()
            frames, boxes = fit_frames([frame for frame, _ in items], backend.input_size, resize, fill)
            inputs = backend.preprocess(frames)
            mid = time.perf_counter()
            labels = backend.infer(inputs)
            times.add("preprocess", mid - start, len(items))
            times.add("infer", time.perf_counter() - mid, len(items))
            if adapter is not None:
                adapter.observe(inputs, [info for _, info in items])
            for (frame, info), lab, box in zip(items, labels, boxes):
                yield Prediction(frame, lab, info, box)
    finally:
        stop.set()
        cancel = getattr(source, "cancel", None)  # a live source waiting out a drop stops waiting
        if cancel is not None:
            cancel()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        reader.join()


class Adapter(Protocol):
    """A plug-in of the infer thread (``adapt.online.adapter.OnlineAdapter``): sees each batch after inference."""

    def observe(self, inputs: Any, infos: list[FrameInfo]) -> None: ...


class Sink(Protocol):
    """Where predictions go (on the writer thread): ``postprocess`` then ``encode``."""

    def postprocess(self, pred: Prediction) -> Any: ...

    def encode(self, pred: Prediction, post: Any) -> None: ...


class _Writer:
    """The writer thread: postprocess + encode each prediction, in order, timed."""

    def __init__(self, sink: Sink, times: StageTimes, on_done: Optional[Callable[[], None]], size: int):
        self.sink, self.times, self.on_done = sink, times, on_done
        self.q: queue.Queue = queue.Queue(maxsize=size)
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="encode")
        self.thread.start()

    def _run(self) -> None:
        while (pred := self.q.get()) is not _END:
            if self.error is not None:
                continue  # keep draining so the producer never blocks
            try:
                start = time.perf_counter()
                post = self.sink.postprocess(pred)
                mid = time.perf_counter()
                self.sink.encode(pred, post)
                self.times.add("postprocess", mid - start)
                self.times.add("encode", time.perf_counter() - mid)
                if self.on_done:
                    self.on_done()
            except BaseException as e:
                self.error = e

    def put(self, pred: Prediction) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(pred)

    def finish(self) -> None:
        self.q.put(_END)
        self.thread.join()
        if self.error is not None:
            raise self.error


@dataclass
class PipelineResult:
    frames: int
    wall_s: float
    partial: bool
    times: StageTimes

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


def run_pipeline(source: Source, backend, sink: Sink, batch: Optional[int] = None,
                 on_done: Optional[Callable[[], None]] = None, queue_size: int = 16,
                 resize: str = "letterbox", adapter: Optional[Adapter] = None) -> PipelineResult:
    """Run ``source`` through ``backend`` into ``sink``; Ctrl-C stops cleanly (``partial=True``).

    On Ctrl-C the frames already inferred are still encoded and the sink is left to close its files,
    so an interrupted video is playable up to the last frame.
    """
    times = StageTimes()
    writer = _Writer(sink, times, on_done, queue_size)
    frames, partial = 0, False
    start = time.perf_counter()
    stream = stream_inference(source, backend, batch, queue_size, times, resize, adapter)
    try:
        for pred in stream:
            writer.put(pred)
            frames += 1
    except KeyboardInterrupt:
        partial = True
    finally:
        stream.close()
        writer.finish()
    return PipelineResult(frames, time.perf_counter() - start, partial, times)
