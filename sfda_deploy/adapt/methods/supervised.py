"""Supervised source training (``train-source``): cross-entropy on labelled crops, ignore 255."""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from sfda_deploy.adapt.augment import photometric_augment
from sfda_deploy.adapt.methods.base import LoopConfig, Method, Stage
from sfda_deploy.classes import IGNORE


@dataclass(frozen=True)
class SupervisedConfig(LoopConfig):
    """Source training: AdamW, no warm-up by default, head at 10× lr (overridden by TrainSourceConfig).

    ``augment``: photometric augmentation (colour jitter, blur, sensor noise) of the labelled crops, so
    the source model does not learn one renderer's exact colours (what makes adaptation possible at all).
    """

    iters: int = 2000
    batch: int = 8
    crop: tuple[int, int] = (256, 512)
    lr: float = 1e-3
    weight_decay: float = 0.01
    checkpoint_every: int = 500
    augment: bool = True


def step(batch, student, teacher, state, cfg):
    """CE(student(x), y) averaged over labelled pixels. Args: batch["target"] with image/label."""
    b = batch["target"]
    images = photometric_augment(b["image"], state.generator) if cfg.augment else b["image"]
    logits = student(state.normalize(images))
    if state.want_preview:
        state.previews = {"image": b["image"], "pseudo": b["label"], "pred": logits.argmax(1)}
    return {"ce": F.cross_entropy(logits.float(), b["label"], ignore_index=IGNORE)}


METHOD = Method("supervised", SupervisedConfig,
                (Stage("S", step, labels=True, description="supervised cross-entropy"),),
                "supervised source training")
