"""``sfda-deploy benchmark``: pure inference latency and fps of one or several models.

"Pure inference" is ``backend.infer`` on an already preprocessed batch: the network, the argmax and
the copy of the label maps to the host. That copy waits for the GPU, so CUDA timings are synchronised
without an extra call (``backend.synchronize()`` is still called once before the clock starts).
Several models are open at once and timed in turn, call by call (``runtime.timing``): medians and
the spread are reported, with a warning when the spread says the machine was busy.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from sfda_deploy.config import BenchmarkConfig
from sfda_deploy.config_build import save_config
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural, say
from sfda_deploy.progress import progress as bar
from sfda_deploy.report import pyplot, save_figure
from sfda_deploy.runs import check_writable, new_run_dir, write_json
from sfda_deploy.runtime.backends import backend_for, describe, load_backend, resolve_model_path
from sfda_deploy.runtime.timing import alternate, busy_warning, relative_spread


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


def models_to_time(positional: tuple[str, ...], model: Optional[str], compare: tuple[str, ...]) -> dict[str, Any]:
    """The config fields ``benchmark MODELS...`` sets: one model → ``model``; several, or any with
    ``--compare``, → ``compare`` (``--compare``'s first).

    Args:
        positional: the MODELS arguments.
        model / compare: ``--model`` / ``--compare`` when given on the command line (None / ``()`` otherwise).
    Raises:
        SfdaError: a MODELS argument and ``--model`` both name the one model to time.
    """
    if compare or len(positional) > 1:
        return {"compare": tuple(compare) + tuple(positional)}
    if positional and model:
        raise SfdaError(f"two models given ({model} with --model and {positional[0]}): give one, or "
                        "compare them with --compare A B")
    return {"model": positional[0]} if positional else {}


def run_benchmark(cfg: BenchmarkConfig) -> Optional[Path]:
    """Benchmark ``cfg.model`` (or each of ``cfg.compare``); returns the run directory."""
    models: list[Optional[str]] = list(cfg.compare) or [cfg.model]
    if cfg.compare and cfg.model:
        models.insert(0, cfg.model)
    if cfg.warmup < 0 or cfg.iters < 1:
        raise SfdaError(f"--warmup must be >= 0 and --iters >= 1, got {cfg.warmup} and {cfg.iters}")
    for model in models:  # missing files / unknown kinds fail before minutes of timing
        backend_for(resolve_model_path(model), cfg.backend)
    check_writable("benchmark")  # so does an unwritable output place
    backends = []
    try:  # all open at once: their calls alternate, so a change of load hits every model alike
        for model in models:
            backends.append(load_backend(model, cfg.backend, cfg.device, cfg.imgsz, cfg.batch, cfg.threads,
                                         cfg.ort_opt))
        rows = time_backends(backends, cfg.warmup, cfg.iters, progress=not cfg.json)
    finally:
        for backend in backends:
            backend.close()
    # the run directory is made after all timings: a failure leaves nothing
    rows = [{"model": model or "bundled demo model", **row} for model, row in zip(models, rows)]
    run_dir = new_run_dir("benchmark", cfg.name)
    write_json(run_dir / "results.json", rows)
    save_config(run_dir, cfg)
    if len(rows) > 1:
        write_chart(run_dir / "fps.png", rows)
    if cfg.json:
        say(json.dumps(rows, indent=2))
    else:
        say(format_table(rows))
        for r in rows:
            for note in r["notes"]:  # which model a note is about, when several are compared
                say(f"note ({Path(r['model']).name}): {note}" if len(rows) > 1 else f"note: {note}")
        say(f"{plural(cfg.iters, 'round')} of {' / '.join(r['backend'] for r in rows)} in turn, "
                   f"after {plural(cfg.warmup, 'warm-up call')} each; fps = batch / median")
        warning = busy_warning([r["spread_pct"] / 100 for r in rows])
        if warning:
            say(f"warning: {warning}")
        say(f"results: {run_dir / 'results.json'}")
    return run_dir
