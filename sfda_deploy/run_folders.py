"""Run folders as models: a run directory stands for the model file it wrote (``model_in_run``), adapt's
resume state is not a model (``check_not_resume_state``), and "the latest" run of a command is the most
recently finished one (``latest_run``: its newest file, since the CLI appends to its log.txt last).

Layer 2, beside ``runs`` (which it reads run marks from).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from sfda_deploy.errors import SfdaError
from sfda_deploy.runs import run_status, runs_root

# What each command's run directory ships, in the order a folder is read: a checkpoint first (adapt,
# train-source, import-pth), then an export's files, then segment --adapt's weights.
RUN_MODEL_FILES = ("model.safetensors", "model.onnx", "adapted.safetensors")
RESUME_STATE = "last.pt"  # adapt's and train-source's resume state: a training state, not a model


def model_in_run(path: Path | str, engine: bool = False) -> Path:
    """The model file a run directory stands for (``path`` itself when it is not a directory).

    Args:
        engine: prefer an export's ``model.engine`` (runs on a GPU with TensorRT) over its ``model.onnx``.
    Raises:
        SfdaError: a directory that holds no model file, naming what was looked for.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    names = (("model.engine",) if engine else ()) + RUN_MODEL_FILES
    for name in names:
        if (path / name).is_file():
            return path / name
    raise SfdaError(f"{path} is a folder without a model file ({', '.join(names)}): pass a run directory "
                    "(runs/adapt/NAME, runs/export/NAME) or the model file itself")


def check_not_resume_state(path: Path | str) -> None:
    """Refuse adapt's ``last.pt`` resume state where a model is expected, naming the model beside it."""
    path = Path(path)
    if path.name != RESUME_STATE:
        return
    beside = path.parent / "model.safetensors"
    model = (f"{beside} (the model the run shipped)" if beside.is_file()
             else "the run's model.safetensors once it has finished")
    raise SfdaError(f"{path} is the run's resume state (for --resume {path.parent}), not a model: pass {model}")


def finished_at(run_dir: Path) -> float:
    """When a run last wrote a file of its own (its newest top-level file's mtime)."""
    times = [p.stat().st_mtime for p in run_dir.iterdir() if p.is_file()]
    return max(times, default=run_dir.stat().st_mtime)


def latest_run(command: str, needs: Sequence[str] = ("model.safetensors",)) -> Path | None:
    """The most recently finished run of ``command`` holding one of ``needs``: ``runs/<command>/*``, and the
    demo's own sub-run of that command (``runs/demo/*/<command>``); None when there is none."""
    root = runs_root()
    candidates = [*root.glob(f"{command}/*"), *root.glob(f"demo/*/{command}")]
    done = [d for d in candidates if d.is_dir() and run_status(d)[0] == "finished"
            and run_status(d.parent)[0] == "finished" and any((d / n).is_file() for n in needs)]
    return max(done, key=finished_at, default=None)


def describe_run_time(run_dir: Path) -> str:
    """``runs/adapt/atp (finished 2025-01-31 14:02)``: a run named with when it finished."""
    return f"{run_dir} (finished {time.strftime('%Y-%m-%d %H:%M', time.localtime(finished_at(run_dir)))})"
