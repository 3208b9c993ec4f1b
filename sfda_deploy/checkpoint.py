"""Checkpoints: ``model.safetensors`` whose header carries the JSON metadata; ``load_model`` also opens a
legacy ``.pth`` through ``sfda_deploy.pth_import``.

Loading never executes what a file holds: safetensors is plain tensors, and ``.pth`` files go through
``torch.load(weights_only=True)``. Loads are strict: a mismatch lists the missing/unexpected keys
(a silent partial load is a known failure of published SFDA code).
``import_pth`` maps the SFDA papers' published ``.pth`` layouts onto the registry's models.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.pth_import import import_pth
from sfda_deploy.runs import write_bytes
from sfda_deploy.state_dict import check_file, load_state

META_KEY = "sfda_deploy"


def save_checkpoint(path: Path | str, model: nn.Module, meta: ModelMeta) -> Path:
    """Write weights + metadata atomically. Returns the path.

    Serialised in memory first, so a full disk is a plain ``OSError`` (safetensors' own writer reports it as
    its own error type) and the error line can say how big the file was."""
    from safetensors.torch import save

    module = model.module if hasattr(model, "module") else model  # DDP
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return write_bytes(path, save(state, metadata={META_KEY: meta.to_json()}))


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


def load_model(path: Path | str, device: str | torch.device = "cpu", arch: str | None = None,
               **import_kwargs) -> tuple[nn.Module, ModelMeta]:
    """Load a checkpoint → (model in eval mode on ``device``, ModelMeta).

    ``.safetensors`` files carry their metadata. A legacy ``.pth``/``.pt`` file does not, so it loads
    only when ``arch`` (and ``normalization``, see :func:`import_pth`) are given.
    """
    path = check_file(path)
    if path.suffix in (".pth", ".pt"):
        if arch is None:
            raise SfdaError(
                f"{path} is a legacy .pth file without metadata: pass arch= and normalization= "
                "(load_model(path, arch='deeplabv2_r101', normalization='caffe')) or convert it once "
                "with 'sfda-deploy import-pth FILE --arch ARCH --normalization caffe|imagenet'"
            )
        model, meta = import_pth(path, arch, **import_kwargs)
        return model.to(device).eval(), meta
    state, meta = read_safetensors(path)
    model = build_model(meta.arch, num_classes=meta.num_classes, align_corners=meta.align_corners,
                        **meta.arch_kwargs)
    load_state(model, state, str(path))
    if meta.num_classes != meta.classes.num_classes:
        raise SfdaError(f"class-count mismatch: {path} predicts {meta.num_classes} classes but its class set "
                        f"'{meta.class_set}' has {meta.classes.num_classes}: re-create the checkpoint")
    return model.to(device).eval(), meta
