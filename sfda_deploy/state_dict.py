"""Weights files and models: a file that exists and finished (``check_file``), the strict load that names
what does not fit (``load_state``), and a file's digest (``file_sha256``, what provenance records).
Layer 3, beside ``checkpoint`` and ``pth_import``, which both use it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from sfda_deploy.errors import SfdaError
from sfda_deploy.run_folders import check_not_resume_state, model_in_run
from sfda_deploy.runs import check_finished


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that names the missing/unexpected keys instead of a traceback."""
    missing, unexpected = [], []
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} of another shape (e.g. {k}: file {tuple(state[k].shape)} "
                         f"vs model {tuple(own[k].shape)})")
        raise SfdaError(
            f"{source} does not fit the model: {'; '.join(parts)}; check --arch / class count "
            "or the key layout of the file"
        )
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise SfdaError(f"{source} holds non-finite weights (NaN or inf) in {k}: the training that wrote it "
                            "diverged; use an earlier checkpoint (stage_*.safetensors) or train again with a lower --lr")
    model.load_state_dict(state, strict=True)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path: Path | str) -> Path:
    """``path`` if it is a file of a run that finished (``runs.check_finished``), else a one-line error; a
    run directory stands for its model (``run_folders.model_in_run``)."""
    path = model_in_run(path)
    check_not_resume_state(path)
    if not path.is_file():
        raise SfdaError(f"checkpoint {path} does not exist: check the path (runs/*/*/model.safetensors)")
    check_finished(path)
    return path
