"""LDBE (label denoising + boundary enhancement, ACM MM 2021), docs/methods.md.

Two stages, as the released code runs them (``method: ld``, then a second run with ``method: be`` from
the LD model): ``LD`` then ``BE``, each ``cfg.iters`` iterations in ``rounds`` self-training rounds (2).
At each round start (``round_start``) the loop freezes the current student; a pass over the full
target images computes the class-balanced thresholds τ_c from every 5th sorted confidence of each
image's argmax classes, with ρ = ``rho + rho_step·r`` (0.10, 0.15; each stage is a fresh run, so ρ
starts at 0.10 again in BE). The learning rate is divided by √2 per round (``lr_scale``), its poly
decay runs over a 5000-step horizon restarted every round (``poly_horizon``: the code's ``num_steps``;
with ~991 steps per round it stays ≥ 0.82× base), and the SGD state is fresh every round
(``round_fresh_optimizer``: the code re-creates the optimizer). Each iteration:

* pseudo labels of the crop from the frozen round model: argmax on ``M_global ∪ M_image``
  (``ldbe_pseudo_labels``; ``argmax_only`` for the CBST global rule);
* LD: CE(ŷ) + ``ent_weight``·entropy (the code's double softmax by default, ``double_softmax``)
  + ``neg_weight``·NL with the k-th ranked class of the student's (detached) probabilities,
  k = ⌊C/2⌋ + U{−3..3} drawn once per batch (clamped to 2..C);
* BE: the EMA teacher's (α_t = min(1 − 1/(t+1), 0.99), started from the LD model) argmax/confidence,
  overwritten by the pseudo label (conf 1) where one exists; ClassMix of half the classes of image i
  onto image (i+1) mod B; loss = ``be_weight``·mean over CE > 0 of w_i·CE, w_i = fraction of mixed
  pixels with conf ≥ 0.97.

``--stages LD`` is the paper's "LD" row. Where the spec leaves a gap (documented): the image mask's
top-ρ is taken over the training crop (the code labels the full 2048×1024 image offline); the
thresholds come from full images as in the code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfda_deploy.adapt.losses import (
    confidence_weighted_ce,
    labelled_cross_entropy,
    ldbe_entropy_loss,
    negative_learning_loss,
)
from sfda_deploy.adapt.methods.base import LoopConfig, Method, Stage
from sfda_deploy.adapt.methods.common import cpu_generator, probs_of, python_rng, target_pass
from sfda_deploy.adapt.mixing import classmix_masks, mix_with_next
from sfda_deploy.adapt.pseudo_labels import (
    kth_ranked_class,
    ldbe_class_thresholds,
    ldbe_draw_k,
    ldbe_pseudo_labels,
    ldbe_subsample_confidences,
)
from sfda_deploy.classes import IGNORE


@dataclass(frozen=True)
class LdbeConfig(LoopConfig):
    """LDBE defaults (``config/ldbe_config.yml``): SGD 1e-4 (head 10×), momentum 0.9, wd 5e-4."""

    iters: int = 2000
    batch: int = 3
    crop: tuple[int, int] = (600, 600)
    optimizer: str = "sgd"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    poly_horizon: int = 5000        # the code's num_steps, restarted each round
    round_fresh_optimizer: bool = True
    ema_alpha: float = 0.99
    rounds: int = 2
    rho: float = 0.10               # cb_prop of round 0
    rho_step: float = 0.05          # + per round
    subsample: int = 5              # keep every 5th sorted confidence
    argmax_only: bool = False       # global mask: any class above its τ (code) vs argmax only
    double_softmax: bool = True     # the code's entropy quirk; False: Shannon H(p)
    ent_weight: float = 1.0
    neg_weight: float = 1.0
    k_width: int = 3                # k = ⌊C/2⌋ + U{−k_width..k_width}
    be_weight: float = 1.0
    be_threshold: float = 0.97
    round_lr_decay: float = 2 ** -0.5


def round_rho(cfg: LdbeConfig, r: int) -> float:
    """ρ of round ``r``: 0.10, 0.15, …"""
    return cfg.rho + cfg.rho_step * r


def round_start(ctx, store: dict, r: int) -> dict:
    """Class thresholds of round ``r`` from the frozen round model over the whole target set."""
    cfg = ctx.cfg
    pools = None
    for probs in target_pass(ctx):
        parts = ldbe_subsample_confidences(probs[0], cfg.subsample)
        pools = [p.cpu() for p in parts] if pools is None else [torch.cat([a, b.cpu()]) for a, b in zip(pools, parts)]
    store = dict(store)
    store["thresholds"] = ldbe_class_thresholds(pools, round_rho(cfg, r))
    store["lr_scale"] = cfg.round_lr_decay ** r
    return store


def be_targets(teacher_probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher argmax/confidence ``[B,H,W]`` with the stored pseudo label (confidence 1) where it exists."""
    conf, pred = teacher_probs.max(dim=1)
    has = labels != IGNORE
    return torch.where(has, labels, pred), torch.where(has, torch.ones_like(conf), conf)


def _round_labels(state, images, cfg: LdbeConfig) -> torch.Tensor:
    """Pseudo labels of the crop from the frozen round model (``M_global ∪ M_image``)."""
    probs = probs_of(state.frozen, state, images)
    return ldbe_pseudo_labels(probs, state.store["thresholds"].to(probs.device), round_rho(cfg, state.store["round"]),
                              cfg.argmax_only)


def step_ld(batch, student, _teacher, state, cfg: LdbeConfig):
    """Label denoising: CE on the round's pseudo labels + entropy + negative learning."""
    images = batch["target"]["image"]
    labels = _round_labels(state, images, cfg)
    logits = student(state.normalize(images)).float()
    c = logits.shape[1]
    k = min(max(ldbe_draw_k(c, python_rng(state), cfg.k_width), 2), c)
    complementary = kth_ranked_class(logits.detach().softmax(dim=1), k)
    if state.want_preview:
        state.previews = {"image": images, "pseudo": labels, "pred": logits.argmax(1)}
    # a crop with no pseudo-labelled pixel contributes no CE (not NaN), as in HIAST, CPSL and PR-SFDA
    ce = labelled_cross_entropy(logits, labels)
    return {
        "ce": ce,
        "ent": cfg.ent_weight * ldbe_entropy_loss(logits, double_softmax=cfg.double_softmax),
        "neg": cfg.neg_weight * negative_learning_loss(logits, complementary=complementary),
    }


def step_be(batch, student, teacher, state, cfg: LdbeConfig):
    """Boundary enhancement: ClassMix of the EMA teacher's labels (pseudo labels where they exist)."""
    images = batch["target"]["image"]
    labels = _round_labels(state, images, cfg)
    with torch.no_grad():
        t_probs = teacher(state.normalize(images)).float().softmax(dim=1)
    mix_labels, mix_conf = be_targets(t_probs, labels)
    masks = classmix_masks(mix_labels, cpu_generator(state))
    mixed = student(state.normalize(mix_with_next(images, masks))).float()
    if state.want_preview:
        state.previews = {"image": images, "pseudo": mix_labels, "pred": t_probs.argmax(1)}
    return {"be": cfg.be_weight * confidence_weighted_ce(
        mixed, mix_with_next(mix_labels, masks), mix_with_next(mix_conf, masks), cfg.be_threshold)}


def _rounds(cfg: LdbeConfig) -> int:
    return cfg.rounds


METHOD = Method("ldbe", LdbeConfig,
                (Stage("LD", step_ld, rounds=_rounds, round_start=round_start,
                       description="label denoising: per-round class-balanced pseudo labels, CE + entropy + NL"),
                 Stage("BE", step_be, teacher=True, rounds=_rounds, round_start=round_start,
                       description="boundary enhancement: ClassMix of EMA-teacher labels, confidence-weighted CE")),
                "LDBE: class-balanced pseudo labels, negative learning, then boundary enhancement")
