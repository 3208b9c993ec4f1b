"""ATP (Wang, Liang, Zhang, TPAMI 2024): Align → Teach → Propagate, as released (docs/methods.md).

* A — curriculum entropy minimisation + diversity on the student's strong view (no teacher).
* T — complementary self-training: EMA-teacher argmax on the weak view (no threshold), CE + ATP's
  negative learning (classes with student p < τ_n) on the strong view.
* P — information propagation: entropy ranking splits the target set into easy (lowest 30 %) and
  hard images; mean-teacher training with CE + NPL on easy pseudo labels, the prototype contrastive
  loss on hard images (from ``contrast_start``) and ClassMix easy → hard weighted by the batch
  confidence q. ``propagation_stage`` lends P to any other method (``--propagate``).

The faithful form is the default; the clean variants are options (``--set``): ``detach_weight``
(A), ``ce_over=labelled`` (CE averaged over labelled pixels), ``pseudo_weight`` (T's CE weighted by q,
computed but unused in the code), ``classmix_batch_classes=false`` (classes drawn per image),
``scl_temperature=0.1`` (L_scl on cosine similarities at temperature 0.1; as released, unit features · raw
prototypes / 100 keep L_scl at ≈ ln C − 1 throughout).
Not ported: ATP's class-balanced "pseudo random crop" (a no-op for its 640-px Cityscapes crops);
the loop's random crop is used instead.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sfda_deploy.adapt import distributed as D
from sfda_deploy.adapt.augment import strong_augment
from sfda_deploy.adapt.losses import (
    curriculum_entropy_terms,
    negative_learning_loss,
    pixel_cross_entropy,
    prototype_contrastive_loss,
)
from sfda_deploy.adapt.methods.base import LoopConfig, Method, PrepareContext, Stage
from sfda_deploy.adapt.mixing import classmix_masks, paste
from sfda_deploy.adapt.pseudo_labels import (
    border_weight,
    class_feature_sums,
    confidence_weight,
    downscale_labels,
    entropy_rank_split,
    image_entropy_scores,
    merge_class_prototypes,
    scaled_rows,
)
from sfda_deploy.classes import IGNORE
from sfda_deploy.errors import SfdaError
from sfda_deploy.progress import progress


@dataclass(frozen=True)
class AtpConfig(LoopConfig):
    """ATP's hyper-parameters (defaults: the released code; docs/methods.md).

    Attributes:
        gamma / alpha / diversity_weight / entropy_scale / detach_weight: stage A (γ = 5, α = 3,
            L_A = 1e-3·L_cel − 1e-4·L_div, weight attached).
        tau_n: negative-learning threshold τ_n (student probabilities below it are negatives).
        ce_over: ``all`` (CE averaged over all pixels, ignored ones as 0: the code) or ``labelled``.
        pseudo_weight: weight stage T's CE by the batch confidence q (clean variant; the code doesn't).
        easy_ratio: λ, the easy share of the entropy ranking.
        confidence_threshold: q = share of pixels whose teacher max-probability ≥ this.
        ignore_top / ignore_bottom: rows of the hard crops whose weight is 0 (Cityscapes' values for
            640-px crops; set 0 for targets without an ego-vehicle band).
        ignore_rows_at: the crop height those row counts are for; other crop heights scale them
            (a 128-px crop ignores 3 and 24 rows, not 15 and 120). The code's fixed rows: set it to
            the crop height.
        proj_dim: projection head output size; contrast_temp: the released L_scl's divisor of
            unit features · raw prototype means (100); scl_temperature: 0 keeps that form; τ > 0 is
            the clean form: L2-normalised prototypes, logits cos(f, μ_c) / τ (e.g. 0.1), contrast_temp
            then unused (set one or the other); contrast_reg_weight: the regulariser's relative
            weight; contrast_start: first iteration of L_scl; downscale_min_ratio: majority-vote
            share of the label downscaling.
        classmix_batch_classes: draw ClassMix classes from the whole batch (DACS quirk, the code).
    """

    iters: int = 40000
    batch: int = 2
    crop: tuple[int, int] = (640, 640)
    lr: float = 6e-5
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup_iters: int = 1500
    head_lr_mult: float = 10.0
    ema_alpha: float = 0.999
    checkpoint_every: int = 1000
    preview_every: int = 2000
    gamma: float = 5.0
    alpha: float = 3.0
    diversity_weight: float = 1e-4
    entropy_scale: float = 1e-3
    detach_weight: bool = False
    tau_n: float = 0.04
    ce_over: str = "all"
    pseudo_weight: bool = False
    easy_ratio: float = 0.3
    confidence_threshold: float = 0.968
    ignore_top: int = 15
    ignore_bottom: int = 120
    ignore_rows_at: int = 640
    proj_dim: int = 512
    contrast_temp: float = 100.0
    scl_temperature: float = 0.0
    contrast_reg_weight: float = 1.0
    contrast_start: int = 1500
    downscale_min_ratio: float = 0.75
    classmix_batch_classes: bool = True

    def __post_init__(self):
        if self.scl_temperature < 0:
            raise ValueError(f"scl_temperature must be 0 (released L_scl) or > 0, got {self.scl_temperature}")
        if self.scl_temperature > 0 and self.contrast_temp != 100.0:
            raise ValueError("scl_temperature (clean L_scl) replaces contrast_temp (released): set one of them")


class ProjectionHead(nn.Module):
    """ATP/SePiCo ``ProjHead``: 1×1 conv F→F + BN + ReLU, 1×1 conv F→D, L2-normalised over channels."""

    def __init__(self, channels: int, dim: int = 512):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True), nn.Conv2d(channels, dim, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B,F,h,w]`` → ``[B,D,h,w]`` unit vectors."""
        return F.normalize(self.body(features), dim=1)


def _strong(images: torch.Tensor, state) -> torch.Tensor:
    return state.normalize(strong_augment(images, state.generator))


def _ce_npl(logits: torch.Tensor, labels: torch.Tensor, cfg: AtpConfig, weight=None) -> tuple:
    """ATP's ``CrossEntropyLoss``: (weighted) CE and the unweighted negative term."""
    logits = logits.float()
    return (pixel_cross_entropy(logits, labels, weight, cfg.ce_over),
            negative_learning_loss(logits, cfg.tau_n))


# ---------------------------------------------------------------------------------- stage A
def step_align(batch, student, teacher, state, cfg: AtpConfig) -> dict:
    """L_A on the student's strong view of the target crop."""
    x = batch["target"]["image"]
    logits = student(_strong(x, state))
    cel, div = curriculum_entropy_terms(logits.float(), cfg.gamma, cfg.alpha, cfg.entropy_scale, cfg.detach_weight)
    if state.want_preview:
        state.previews = {"image": x, "pred": logits.detach().argmax(1)}
    return {"entropy": cel, "diversity": -cfg.diversity_weight * div}


# ---------------------------------------------------------------------------------- stage T
def step_teach(batch, student, teacher, state, cfg: AtpConfig) -> dict:
    """CE + NPL against the teacher's argmax on the weak view; the student sees the strong view."""
    x = batch["target"]["image"]
    with torch.no_grad():
        t_logits = teacher(state.normalize(x)).float()
        pseudo = t_logits.argmax(1)
        weight = confidence_weight(t_logits.softmax(1), cfg.confidence_threshold) if cfg.pseudo_weight else None
    logits = student(_strong(x, state))
    ce, npl = _ce_npl(logits, pseudo, cfg, weight)
    if state.want_preview:
        state.previews = {"image": x, "pseudo": pseudo, "pred": logits.detach().argmax(1)}
    return {"ce": ce, "npl": npl}


# ---------------------------------------------------------------------------------- stage P
@torch.no_grad()
def prepare_propagation(ctx: PrepareContext) -> dict:
    """Rank the target images by ATP's entropy score under the current model (whole images, one by one)."""
    scores = []
    for i in progress(range(len(ctx.dataset)), desc="entropy ranking", disable=not ctx.progress, unit="image"):
        image = ctx.dataset[i]["image"].unsqueeze(0).to(ctx.device)
        scores.append(image_entropy_scores(ctx.model(ctx.meta.normalize(image))).cpu())
    easy, hard = entropy_rank_split(torch.cat(scores), ctx.cfg.easy_ratio)
    return {"streams": {"easy": easy.tolist(), "hard": hard.tolist()}}


def check_propagation(num_images: int, cfg: AtpConfig) -> None:
    """Both splits of the entropy ranking must hold at least one image."""
    easy = int(num_images * cfg.easy_ratio)
    if easy < 1 or easy >= num_images:
        raise SfdaError(f"stage P splits the {num_images} target images into {easy} easy and {num_images - easy} "
                        f"hard (easy_ratio {cfg.easy_ratio}): both need at least one image; add target images "
                        "or change --set easy_ratio")


def propagation_extras(model: nn.Module, cfg: AtpConfig) -> dict:
    return {"proj": ProjectionHead(model.feature_channels, cfg.proj_dim)}


def _flat_labels(labels: torch.Tensor, features: torch.Tensor, num_classes: int, min_ratio: float):
    """Pseudo labels ``[B,H,W]`` downscaled (majority vote) to the feature grid, flattened with the features."""
    h, w = features.shape[-2:]
    factor = max(labels.shape[-1] // w, 1)
    small = downscale_labels(labels, factor, num_classes, min_ratio)
    small = F.pad(small, (0, max(w - small.shape[-1], 0), 0, max(h - small.shape[-2], 0)), value=255)[:, :h, :w]
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), small.reshape(-1)


def step_propagate(batch, student, teacher, state, cfg: AtpConfig) -> dict:
    """Easy CE + NPL, prototype contrast on hard images (from ``contrast_start``), ClassMix easy → hard."""
    xe, xh = batch["easy"]["image"], batch["hard"]["image"]
    num_classes = student.num_classes
    proj, t_proj = state.extras["proj"], state.teacher_extras["proj"]
    with torch.no_grad():
        te_logits, te_feats = teacher(state.normalize(xe), return_features=True)
        ye = te_logits.float().argmax(1)
        th_logits = teacher(state.normalize(xh)).float()
        yh = th_logits.argmax(1)
        q = confidence_weight(th_logits.softmax(1), cfg.confidence_threshold)
        h = yh.shape[-2]
        wh = border_weight(q, tuple(yh.shape), scaled_rows(cfg.ignore_top, h, cfg.ignore_rows_at),
                           scaled_rows(cfg.ignore_bottom, h, cfg.ignore_rows_at), yh.device)
        f, y = _flat_labels(ye, t_proj(te_feats).float(), num_classes, cfg.downscale_min_ratio)
        protos = state.store.get("prototypes")
        if protos is None:
            protos, counts = f.new_zeros(num_classes, f.shape[1]), f.new_zeros(num_classes)
        else:
            protos, counts = protos.to(f.device), state.store["prototype_counts"].to(f.device)
        # every process adds the same (all-reduced) batch statistics, so prototypes stay equal under DDP
        sums, n_new = class_feature_sums(f, y, num_classes)
        D.all_reduce_sum(sums, n_new)
        protos, counts = merge_class_prototypes(protos, counts, sums, n_new)
        state.store["prototypes"], state.store["prototype_counts"] = protos, counts
    xe_s, xh_s = _strong(xe, state), _strong(xh, state)
    logits_e = student(xe_s)
    losses = dict(zip(("ce_easy", "npl_easy"), _ce_npl(logits_e, ye, cfg)))
    if state.iteration >= cfg.contrast_start:
        _, sh_feats = student(xh_s, return_features=True)
        yh_valid = torch.where(wh > 0, yh, IGNORE)
        f, y = _flat_labels(yh_valid, proj(sh_feats).float(), num_classes, cfg.downscale_min_ratio)
        clean = cfg.scl_temperature > 0
        temperature = cfg.scl_temperature if clean else cfg.contrast_temp
        losses["contrast"] = prototype_contrastive_loss(f, y, protos, temperature, cfg.contrast_reg_weight,
                                                        unit_prototypes=clean)
    masks = classmix_masks(ye, state.generator, batch_classes=cfg.classmix_batch_classes, round_up=True)
    # the strong views are mixed, then the mix is strong-augmented again (the released order)
    x_mix = strong_augment(paste(masks, strong_augment(xe, state.generator), strong_augment(xh, state.generator)),
                           state.generator)
    y_mix = paste(masks, ye, yh)
    w_mix = torch.where(masks, torch.ones_like(wh), wh)
    logits_m = student(state.normalize(x_mix))
    losses.update(zip(("ce_mix", "npl_mix"), _ce_npl(logits_m, y_mix, cfg, w_mix)))
    if state.want_preview:
        state.previews = {"image": xe, "pseudo": ye, "pred": logits_e.detach().argmax(1)}
    return losses


PROPAGATE = Stage("P", step_propagate, prepare=prepare_propagation, streams=("easy", "hard"), teacher=True,
                  extras=propagation_extras, check=check_propagation, description="information propagation (easy → hard)")

METHOD = Method("atp", AtpConfig, (
    Stage("A", step_align, description="curriculum entropy minimisation + diversity"),
    Stage("T", step_teach, teacher=True, description="complementary self-training (CE + negative learning)"),
    PROPAGATE,
), "ATP: align, teach, propagate (TPAMI 2024)")


def propagation_stage(cfg: AtpConfig) -> Stage:
    """ATP's stage P with its own config, to run after any method (``--propagate``)."""
    return dataclasses.replace(PROPAGATE, cfg=cfg)


def propagation_config(options: dict[str, Any], **loop_overrides: Any) -> AtpConfig:
    """``AtpConfig`` for ``--propagate`` from ``--set propagate.<key>=...`` options and the common flags."""
    return METHOD.make_config(options, **loop_overrides)



# Frames without an ego-vehicle band (the synthetic benchmark, most dash cams cropped above the bonnet):
# stage P zeroes no rows of the hard crops.
NO_EGO_BAND = {"ignore_top": 0, "ignore_bottom": 0}
