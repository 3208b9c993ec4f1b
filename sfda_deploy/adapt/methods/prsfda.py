"""PR-SFDA (Luo et al., arXiv 2106.12123), docs/methods.md. No public code exists.

One stage ``PR`` of two phases (two rounds of the loop), ``cfg.iters`` iterations in all, split
evenly (``round_bounds``):

* phase 1, confidence regularisation: ``ms_weight``·maximum-squares loss (plain by default,
  ``image_weighted`` for the image-wise class-weighted variant);
* phase 2, noise-aware pseudo-label learning: noisy labels ŷ = argmax of the model frozen at the
  end of phase 1 (``state.frozen``) on the crop; SelNL = NL on a class drawn uniformly from the
  ones ≠ ŷ where the student's p_ŷ > 1/C; SelPL = CE(ŷ) where p_ŷ > ``pl_threshold`` (0.5).

UNVERIFIED in the spec, chosen here: NL and PL weights 1 and 1 (NLNL's ln_neg = 1), the selection
probabilities are the current student's (detached), and each phase is half the budget. The optimiser
follows LDBE's DeepLabV2 setting (SGD 1e-4, head 10×), the common base of both papers' era.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfda_deploy.adapt.losses import labelled_cross_entropy, max_squares_loss, negative_learning_loss
from sfda_deploy.adapt.methods.base import LoopConfig, Method, Stage
from sfda_deploy.adapt.methods.common import cpu_generator, probs_of
from sfda_deploy.adapt.pseudo_labels import random_other_class, selective_masks
from sfda_deploy.classes import IGNORE


@dataclass(frozen=True)
class PrsfdaConfig(LoopConfig):
    """PR-SFDA defaults (weights UNVERIFIED, see the module docstring)."""

    iters: int = 2000
    batch: int = 2
    crop: tuple[int, int] = (512, 512)
    optimizer: str = "sgd"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    image_weighted: bool = False
    ms_weight: float = 1.0
    nl_weight: float = 1.0
    pl_weight: float = 1.0
    pl_threshold: float = 0.5


def noise_aware_losses(logits: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                       pl_threshold: float = 0.5) -> dict:
    """SelNL + SelPL for logits ``[B,C,H,W]`` and noisy labels ``[B,H,W]`` (255 = none)."""
    nl_mask, pl_mask = selective_masks(logits.detach().softmax(dim=1), labels, pl_threshold)
    complementary = random_other_class(labels, logits.shape[1], generator)
    pl_labels = torch.where(pl_mask, labels, torch.full_like(labels, IGNORE))
    ce = labelled_cross_entropy(logits, pl_labels)
    return {"nl": negative_learning_loss(logits, complementary=complementary, mask=nl_mask), "pl": ce}


def step(batch, student, teacher, state, cfg: PrsfdaConfig):
    images = batch["target"]["image"]
    logits = student(state.normalize(images)).float()
    if state.store["round"] == 0:  # phase 1
        return {"ms": cfg.ms_weight * max_squares_loss(logits, image_weighted=cfg.image_weighted)}
    labels = probs_of(state.frozen, state, images).argmax(dim=1)
    out = noise_aware_losses(logits, labels, cpu_generator(state), cfg.pl_threshold)
    if state.want_preview:
        state.previews = {"image": images, "pseudo": labels, "pred": logits.argmax(1)}
    return {"nl": cfg.nl_weight * out["nl"], "pl": cfg.pl_weight * out["pl"]}


METHOD = Method("prsfda", PrsfdaConfig,
                (Stage("PR", step, rounds=lambda cfg: 2,
                       description="max-squares, then selective negative/positive learning"),),
                "PR-SFDA: confidence regularisation, then noise-aware pseudo-label learning")
