"""``sfda-deploy import-pth``: a legacy ``.pth`` (``pth_import``) → a checkpoint of its own run."""
from __future__ import annotations

from pathlib import Path

from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.config import ImportConfig
from sfda_deploy.config_build import save_config
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import say
from sfda_deploy.models import MODELS
from sfda_deploy.pth_import import import_pth
from sfda_deploy.runs import new_run_dir


def run_import(cfg: ImportConfig) -> Path:
    """``sfda-deploy import-pth``: a legacy ``.pth`` → ``runs/import/<name>/model.safetensors``."""
    if not cfg.pth:
        raise SfdaError("no .pth file given: sfda-deploy import-pth FILE --arch ARCH --normalization caffe|imagenet")
    if not cfg.arch:
        raise SfdaError(f"--arch is required to import {cfg.pth}: e.g. --arch deeplabv2_r101 "
                        f"(choose one of {', '.join(sorted(MODELS))})")
    if not cfg.normalization:
        raise SfdaError("--normalization is required: caffe (AdaptSegNet lineage: BGR, mean only) or "
                        "imagenet (RGB, ImageNet mean/std); check the training code of the checkpoint")
    model, meta = import_pth(cfg.pth, cfg.arch, num_classes=cfg.num_classes, class_set=cfg.class_set,
                             normalization=cfg.normalization, align_corners=cfg.align_corners,
                             input_size=cfg.input_size, pth_prefix=cfg.pth_prefix, **cfg.arch_kwargs)
    run_dir = new_run_dir("import", cfg.name or Path(cfg.pth).stem)  # only after the import succeeded
    save_config(run_dir, cfg)
    out = save_checkpoint(run_dir / "model.safetensors", model, meta)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"imported {cfg.pth} ({meta.extra['pth_layout']}) as {meta.arch} ({n_params / 1e6:.1f} M parameters, "
        f"{meta.num_classes} classes '{meta.class_set}', {cfg.normalization} input) → {out}")
    return out
