"""CPU threads: as many as the cores this process may use, never more.

``os.cpu_count()`` counts the machine's cores, not the ones a container, ``taskset`` or a job
scheduler lets the process run on; torch's and ONNX Runtime's thread pools sized from it put
several busy threads on one core, and on a shared machine that made inference 10-40x slower.
``OMP_NUM_THREADS`` (the user's choice) is left alone.
"""
from __future__ import annotations

import os
from typing import Optional


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; the machine's count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(requested: Optional[int] = None, cores: Optional[int] = None) -> int:
    """Threads to use: ``requested`` (``--threads``) when given, else ``OMP_NUM_THREADS`` when set, else
    the available cores."""
    if requested:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return cores or available_cores()


def limit_torch_threads() -> int:
    """Cap torch's intra-op threads at ``default_threads()`` (never raises them); returns the count."""
    import torch

    n = min(torch.get_num_threads(), default_threads())
    torch.set_num_threads(n)
    return n
