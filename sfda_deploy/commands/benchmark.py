"""``sfda-deploy benchmark``: pure inference latency and fps of one or several models (``runtime.bench``),
timed in turn; ``results.json``, ``fps.png`` (several models) and ``config.yaml`` in ``runs/benchmark/<name>``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from sfda_deploy.config import BenchmarkConfig
from sfda_deploy.config_build import save_config
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural, say
from sfda_deploy.runs import check_writable, new_run_dir, write_json
from sfda_deploy.runtime.backends import backend_for, load_backend, resolve_model_path
from sfda_deploy.runtime.bench import format_table, time_backends, write_chart
from sfda_deploy.runtime.timing import busy_warning


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
