"""Progress bars with one behaviour on a terminal and in a pipe or log file.

On a terminal: tqdm's bar, redrawn in place and cleared when done (the command prints its result).
Elsewhere (``| tee log.txt``, CI, ``nohup``): a plain line at every ``PIPE_STEP`` per cent (at most
one per ``MIN_INTERVAL`` seconds: a bar of a second prints its last line only) and one at the end,
so a log shows progress instead of nothing for minutes, and no finished bar is printed twice.
Both write to stderr; ``bar.write`` prints a line without breaking
the bar.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Optional

from tqdm import tqdm

PIPE_STEP = 10  # per cent between two lines in a pipe
MIN_INTERVAL = 1.0  # seconds between two progress lines in a pipe


def pipe_marks(done: int, total: int, step: int = PIPE_STEP) -> int:
    """How many ``step``-% marks ``done`` of ``total`` has passed (0 … 100/step)."""
    if total <= 0:
        return 0
    return min(done, total) * 100 // (total * step) if step > 0 else 0


class LineProgress:
    """tqdm's small API (iterate, ``update``, ``set_postfix``, ``close``, ``write``) as plain lines."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", initial: int = 0, stream=None, clock=time.perf_counter):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, initial, ""
        self.stream = stream or sys.stderr
        self._marks = pipe_marks(initial, total or 0)
        self.clock = clock
        self._start = self._last = clock()
        self._closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _line(self) -> str:
        seconds = self.clock() - self._start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f"{100 * self.n // self.total}% " if self.total else ""
        rate = f", {self.n / seconds:.2f} {self.unit}/s" if seconds > 0 and self.n else ""
        tail = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {pct}({done} {self.unit}, {seconds:.0f}s{rate}{tail})"

    def update(self, n: int = 1) -> None:
        self.n += n
        marks = pipe_marks(self.n, self.total or 0)
        if marks > self._marks and self.n < (self.total or 0):
            self._marks = marks
            if self.clock() - self._last >= MIN_INTERVAL:
                self._last = self.clock()
                print(self._line(), file=self.stream, flush=True)

    def set_postfix(self, values: Optional[dict] = None, refresh: bool = True, **kw) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(values or {}), **kw}.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            print(self._line(), file=self.stream, flush=True)

    @staticmethod
    def write(line: str) -> None:
        print(line, file=sys.stderr, flush=True)


_hidden = False  # hide_bars(): every bar of this process shows nothing (a worker of a fleet run)


def hide_bars(hidden: bool = True) -> None:
    """Show no progress bar in this process (``segment --ray``'s workers: the driver draws the one bar)."""
    global _hidden
    _hidden = hidden


def progress(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
             disable: bool = False, unit: str = "it", initial: int = 0, leave: bool = False):
    """A progress bar over ``iterable`` (or ``update``-driven with ``total``): tqdm on a terminal, a
    ``LineProgress`` elsewhere; ``disable`` shows nothing (other ranks, ``--json``); ``leave`` keeps a
    finished terminal bar on screen (a training stage's speed and last losses)."""
    disable = disable or _hidden
    if disable or not sys.stderr.isatty():
        if disable:
            return tqdm(iterable, total=total, disable=True)
        return LineProgress(iterable, total, desc, unit, initial)
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, leave=leave)


def write(line: str) -> None:
    """Print a line to stderr without breaking a bar being drawn."""
    tqdm.write(line, file=sys.stderr)
