"""Pure inference latency and fps of one or several models (the ``benchmark`` command is
``commands.benchmark``).

"Pure inference" is ``backend.infer`` on an already preprocessed batch: the network, the argmax and
the copy of the label maps to the host. That copy waits for the GPU, so CUDA timings are synchronised
without an extra call (``backend.synchronize()`` is still called once before the clock starts).
Several models are open at once and timed in turn, call by call (``runtime.timing``): medians and
the spread are reported, with a warning when the spread says the machine was busy.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sfda_deploy.errors import SfdaError
from sfda_deploy.progress import progress as bar
from sfda_deploy.report import pyplot, save_figure
from sfda_deploy.runtime.backends import describe
from sfda_deploy.runtime.timing import alternate, relative_spread


def latency_stats(seconds: Sequence[float], batch: int) -> dict[str, float]:
    """Per-call latencies (s) → ms statistics and frames/s.

    Percentiles use linear interpolation between order statistics (numpy's default).

    Returns:
        ``{"mean_ms", "p50_ms", "p90_ms", "p99_ms", "spread_pct", "fps"}``: p50 is the median, the
        spread is (p75 − p25) / median in %, fps = batch / median latency (a few slow calls caused by
        other processes do not move it).
    """
    if len(seconds) == 0:
        raise SfdaError("no timed iterations: pass --iters >= 1")
    ms = np.asarray(seconds, np.float64) * 1000.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {"mean_ms": round(float(ms.mean()), 4), "p50_ms": round(p50, 4), "p90_ms": round(p90, 4),
            "p99_ms": round(p99, 4), "spread_pct": round(100 * relative_spread(ms), 2),
            "fps": round(1000.0 * batch / p50, 3) if p50 > 0 else 0.0}


def time_backends(backends: Sequence, warmup: int, iters: int, progress: bool = True,
                  clock: Callable[[], float] = time.perf_counter) -> list[dict[str, Any]]:
    """Time ``backend.infer`` of each backend on one random batch at its input size, alternating the
    backends call by call (A, B, A, B, ...: ``timing.alternate``) so a change of load hits all alike.

    Returns:
        per backend: ``latency_stats`` plus ``describe(backend)``, ``iters`` and ``warmup``.
    """
    if warmup < 0 or iters < 1:
        raise SfdaError(f"--warmup must be >= 0 and --iters >= 1, got {warmup} and {iters}")
    calls = []
    for backend in backends:
        h, w = backend.input_size
        frames = np.random.default_rng(0).integers(0, 256, (backend.batch, h, w, 3), dtype=np.uint8)
        inputs = backend.preprocess(frames)
        for _ in range(warmup):
            backend.infer(inputs)
        backend.synchronize()
        calls.append(lambda b=backend, x=inputs: b.infer(x))  # host label maps: the device work is finished
    names = " / ".join(b.name for b in backends)
    with bar(total=iters, desc=f"benchmark {names}", unit="round", disable=not progress) as shown:
        seconds = alternate(calls, iters, on_round=lambda: shown.update(1), clock=clock)
    return [{**describe(b), **latency_stats(s, b.batch), "iters": iters, "warmup": warmup}
            for b, s in zip(backends, seconds)]


def time_backend(backend, warmup: int, iters: int, progress: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """``time_backends`` of one backend."""
    return time_backends([backend], warmup, iters, progress, clock)[0]


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table: model, backend, size, batch, median (p50) / p90 / p99 ms, spread, fps."""
    head = f"{'model':<28} {'backend':<12} {'size':>10} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} " \
           f"{'p99 ms':>9} {'spread':>7} {'fps':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        size = "x".join(str(v) for v in r["input_size"])
        lines.append(f"{Path(r['model']).name[:28]:<28} {r['backend']:<12} {size:>10} {r['batch']:>5} "
                     f"{r['p50_ms']:>9.2f} {r['p90_ms']:>9.2f} {r['p99_ms']:>9.2f} {r['spread_pct']:>6.0f}% "
                     f"{r['fps']:>9.2f}")
    return "\n".join(lines)


def write_chart(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Bar chart of fps per model/backend (PNG, written atomically)."""
    plt = pyplot()
    labels = [f"{Path(r['model']).name}\n{r['backend']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(rows)), 3.5))
    ax.bar(range(len(rows)), [r["fps"] for r in rows], color="#4C72B0")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("frames / s")
    size = "x".join(str(v) for v in rows[0]["input_size"])
    ax.set_title(f"inference speed ({size}, batch {rows[0]['batch']})")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    return path
