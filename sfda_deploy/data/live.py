"""Live sources (webcams, streams) that drop and come back: a watchdog and reconnection with backoff.

The capture is read on its own thread (``_Feed``) and the consumer waits for each frame at most
``after_s`` seconds since the previous one, so a read blocked inside FFmpeg (a stall with no error)
cannot hold the run. After such a gap the link counts as dropped: the capture is abandoned (its thread
releases it once its read returns) and the source is reopened after 1, 2, 4, 8, 8, ... seconds, up to
``tries`` times (-1: forever, 0: never). When every try fails the frames end and the run finishes
normally. Each drop, each reconnect and the giving up is one line through ``log``.

``LinkStats`` counts what happened for ``summary.json``: drops, reconnects, frames lost (estimated
from the gap and the rate the frames arrived at before it), the longest gap.
"""
from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from sfda_deploy.errors import SfdaError

BACKOFF_S = (1.0, 2.0, 4.0, 8.0)  # wait before try 1, 2, 3, 4; every later try waits the last
FAILED_READ_PAUSE_S = 0.02  # a capture that fails at once (closed connection) is not polled in a busy loop
EXIT_WAIT_S = 15.0  # at exit, how long to wait for reads still blocked in FFmpeg (its read timeout is 10 s)


@dataclass(frozen=True)
class ReconnectPolicy:
    """``after_s``: seconds without a frame that count as a drop; ``tries``: reopen attempts per drop
    (-1: forever, 0: a drop ends the source)."""

    after_s: float = 2.0
    tries: int = 5

    def __post_init__(self):
        if not self.after_s > 0:
            raise SfdaError(f"--reconnect-after must be > 0 seconds, got {self.after_s}")
        if self.tries < -1:
            raise SfdaError(f"--reconnect-tries must be -1 (forever), 0 (never) or more, got {self.tries}")

    def allows(self, attempt: int) -> bool:
        """Whether try number ``attempt`` (1-based) may run."""
        return self.tries < 0 or attempt <= self.tries

    @staticmethod
    def delay(attempt: int) -> float:
        """Seconds to wait before try ``attempt`` (1-based): 1, 2, 4, 8, 8, ..."""
        return BACKOFF_S[min(attempt, len(BACKOFF_S)) - 1]


@dataclass
class LinkStats:
    """What the link went through (``summary.json["reconnect"]``)."""

    drops: int = 0
    reconnects: int = 0
    frames_lost: int = 0
    longest_gap_s: float = 0.0
    gave_up: bool = False

    def add_gap(self, gap_s: float, frame_interval_s: Optional[float]) -> int:
        """Record a gap between two frames; returns the frames it lost (those the source's rate would
        have sent in between: ``round(gap / interval) - 1``, 0 when the rate is unknown)."""
        self.longest_gap_s = max(self.longest_gap_s, round(gap_s, 3))
        lost = max(0, round(gap_s / frame_interval_s) - 1) if frame_interval_s else 0
        self.frames_lost += lost
        return lost

    def as_dict(self) -> dict:
        return asdict(self)


class FrameRate:
    """The mean interval between frames as they arrive, gaps (drops) left out."""

    def __init__(self):
        self.seconds, self.intervals = 0.0, 0

    def add(self, interval_s: float) -> None:
        self.seconds += interval_s
        self.intervals += 1

    @property
    def interval_s(self) -> Optional[float]:
        return self.seconds / self.intervals if self.intervals else None


class _Feed:
    """One capture read on its own thread into its own small queue of ``(arrival time, RGB frame)``."""

    def __init__(self, capture: cv2.VideoCapture, name: str):
        self.capture, self.frames = capture, queue.Queue(maxsize=2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=name)
        self.thread.start()
        _FEEDS.add(self)

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                ok, bgr = self.capture.read()  # may block for as long as FFmpeg's read timeout
                if self.stopped.is_set():
                    break
                if not ok or bgr is None:
                    time.sleep(FAILED_READ_PAUSE_S)
                    continue
                item = (time.monotonic(), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                while not self.stopped.is_set():
                    try:
                        self.frames.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        finally:
            self.capture.release()  # only this thread touches the capture

    def stop(self) -> None:
        """Abandon the capture: the thread releases it once its current read returns."""
        self.stopped.set()


_FEEDS: "weakref.WeakSet[_Feed]" = weakref.WeakSet()


@atexit.register
def _stop_feeds() -> None:
    """Let every capture thread leave its read before the interpreter ends: a daemon thread still inside
    OpenCV's C++ when Python finalises is unwound through it and aborts the process."""
    feeds = list(_FEEDS)
    for feed in feeds:
        feed.stop()
    deadline = time.monotonic() + EXIT_WAIT_S
    for feed in feeds:
        feed.thread.join(max(0.0, deadline - time.monotonic()))


class LiveLink:
    """Frames of a live capture that survive drops (see module doc).

    Args:
        what: how log lines name the source (``stream rtsp://...``).
        capture: the opened capture; ``first``: its first frame, already read.
        reopen: opens the source again (raises ``SfdaError`` when it cannot).
        policy: when to reconnect; ``log``: one line per drop, reconnect and giving up.
    """

    def __init__(self, what: str, capture: cv2.VideoCapture, first: np.ndarray,
                 reopen: Callable[[], cv2.VideoCapture], policy: ReconnectPolicy, log: Callable[[str], None]):
        self.what, self.capture, self.first = what, capture, first
        self.reopen, self.policy, self.log = reopen, policy, log
        self.stats, self.rate = LinkStats(), FrameRate()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop waiting (the run is ending): ``frames`` returns at its next wait."""
        self.cancelled.set()

    def frames(self) -> Iterator[np.ndarray]:
        """RGB frames, each once, in arrival order; ends when the link is given up or cancelled."""
        feed, last = _Feed(self.capture, "live-feed"), time.monotonic()
        yield self.first
        try:
            while not self.cancelled.is_set():
                waited = time.monotonic() - last
                try:
                    arrived, frame = feed.frames.get(timeout=min(max(self.policy.after_s - waited, 0.0), 0.25))
                except queue.Empty:
                    if time.monotonic() - last < self.policy.after_s:
                        continue  # short waits so that a cancel is seen quickly
                    feed.stop()
                    feed, arrived, frame = self._reconnect(last)
                    if feed is None:
                        return
                else:
                    self.rate.add(arrived - last)
                last = arrived
                yield frame
        finally:
            if feed is not None:
                feed.stop()

    def _reconnect(self, last: float):
        """After a drop: reopen with backoff until a frame arrives. Returns ``(feed, arrival, frame)``, or
        ``(None, None, None)`` when the tries are used up or the run ends."""
        self.stats.drops += 1
        tries = "forever" if self.policy.tries < 0 else f"up to {self.policy.tries} tries"
        self.log(f"{self.what}: no frame for {self.policy.after_s:g} s (drop {self.stats.drops}): "
                 f"reconnecting ({tries})")
        attempt = 0
        while self.policy.allows(attempt + 1):
            attempt += 1
            if self.cancelled.wait(self.policy.delay(attempt)):
                return None, None, None
            got = self._try_open()
            if got is not None:
                feed, arrived, frame = got
                self.stats.reconnects += 1
                lost = self.stats.add_gap(arrived - last, self.rate.interval_s)
                self.log(f"{self.what}: reconnected on try {attempt} after {arrived - last:.1f} s without "
                         f"frames (~{lost} frames lost)")
                return feed, arrived, frame
        self.stats.gave_up = True
        gap = time.monotonic() - last
        self.stats.add_gap(gap, self.rate.interval_s)
        self.log(f"{self.what}: gave up after {attempt} {'try' if attempt == 1 else 'tries'}, {gap:.1f} s "
                 "without frames: ending the run (--reconnect-tries -1 tries forever)")
        return None, None, None

    def _try_open(self):
        """One reopen attempt: the new capture's feed and its first frame, or None."""
        try:
            capture = self.reopen()
        except SfdaError:
            return None
        feed = _Feed(capture, "live-feed")
        try:
            arrived, frame = feed.frames.get(timeout=self.policy.after_s)
        except queue.Empty:  # it opened but sends nothing: not back yet
            feed.stop()
            return None
        return feed, arrived, frame
