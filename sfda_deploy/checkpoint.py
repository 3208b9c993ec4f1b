"""Checkpoints: ``model.safetensors`` whose header carries the JSON metadata, and legacy ``.pth`` import.

Loading never executes what a file holds: safetensors is plain tensors, and ``.pth`` files go through
``torch.load(weights_only=True)``. Loads are strict: a mismatch lists the missing/unexpected keys
(a silent partial load is a known failure of published SFDA code).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.runs import atomic_path

META_KEY = "sfda_deploy"


def save_checkpoint(path: Path | str, model: nn.Module, meta: ModelMeta) -> Path:
    """Write weights + metadata atomically. Returns the path."""
    from safetensors.torch import save_file

    module = model.module if hasattr(model, "module") else model  # DDP
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: meta.to_json()})
    return Path(path)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """Tensors and metadata of a ``.safetensors`` checkpoint, with one-line errors."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated/foreign files
        raise SfdaError(
            f"{path} is not a readable safetensors checkpoint ({type(e).__name__}): "
            "the file is truncated or of another format; re-download or re-create it"
        ) from None
    if META_KEY not in header:
        raise SfdaError(
            f"{path} has no sfda-deploy metadata: import the weights with "
            "'sfda_deploy.checkpoint.import_pth' or re-save them with sfda-deploy"
        )
    return state, ModelMeta.from_json(header[META_KEY], str(path))


def check_file(path: Path | str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SfdaError(f"checkpoint {path} does not exist: check the path (runs/*/*/model.safetensors)")
    return path


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
    model.load_state_dict(state, strict=True)


def load_model(path: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelMeta]:
    """Load ``.safetensors`` (with metadata) → (model in eval mode on ``device``, ModelMeta)."""
    path = check_file(path)
    if path.suffix == ".pth" or path.suffix == ".pt":
        raise SfdaError(
            f"{path} is a legacy .pth file: import it first with "
            "'sfda_deploy.checkpoint.import_pth(path, arch=..., normalization=...)'"
        )
    state, meta = read_safetensors(path)
    model = build_model(meta.arch, num_classes=meta.num_classes, align_corners=meta.align_corners,
                        **meta.arch_kwargs)
    load_state(model, state, str(path))
    return model.to(device).eval(), meta
