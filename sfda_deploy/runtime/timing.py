"""Timing that a busy machine cannot skew unnoticed: alternate the models, report medians and the spread.

Two models timed one after the other meet different machines when another process starts in between;
timed in rounds (A, B, A, B, ...) both see the same load. The median is what a typical call costs;
the spread (interquartile range over the median) says whether the calls agree. On an idle machine
CPU inference calls agree within a few per cent; a spread above ``BUSY_SPREAD`` means other work
shared the cores, and the figures should be measured again on an idle machine.

The statistics are pure functions (lists in, numbers out); ``alternate`` is the only loop.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np

from sfda_deploy.errors import SfdaError

BUSY_SPREAD = 0.25  # IQR / median above this: the timed calls disagree too much for one steady machine


def median(values: Sequence[float]) -> float:
    """The middle value (mean of the two middle ones for an even count)."""
    if len(values) == 0:
        raise SfdaError("no timed iterations: pass --iters >= 1")
    return float(np.median(np.asarray(values, np.float64)))


def relative_spread(values: Sequence[float]) -> float:
    """(75th − 25th percentile) / median: 0 when all calls took the same time.

    Percentiles interpolate linearly between order statistics (numpy's default); 0 for a zero median.
    """
    mid = median(values)
    q25, q75 = np.percentile(np.asarray(values, np.float64), [25, 75])
    return float((q75 - q25) / mid) if mid > 0 else 0.0


def looks_busy(spreads: Sequence[float], limit: float = BUSY_SPREAD) -> bool:
    """True when any model's relative spread exceeds ``limit`` (the busy-machine rule)."""
    return any(s > limit for s in spreads)


def busy_warning(spreads: Sequence[float], limit: float = BUSY_SPREAD) -> Optional[str]:
    """The console line for ``looks_busy`` (None on a steady machine)."""
    if not looks_busy(spreads, limit):
        return None
    return (f"timings spread up to {100 * max(spreads):.0f}% (p75-p25 over the median; under "
            f"{100 * limit:.0f}% on an idle machine): other work shared the cores, so compare the medians "
            "only, or measure again on an idle machine")


def alternate(calls: Sequence[Callable[[], object]], rounds: int, on_round: Optional[Callable[[], None]] = None,
              clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """Time each of ``calls`` once per round, in turn (A, B, A, B, ...), for ``rounds`` rounds.

    Returns:
        seconds per call: ``result[k][r]`` is call ``k`` in round ``r``.
    """
    seconds: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for k, call in enumerate(calls):
            start = clock()
            call()
            seconds[k].append(clock() - start)
        if on_round is not None:
            on_round()
    return seconds
