"""CPSL, source-free variant (CVPR 2022, built on ProDA), docs/methods.md.

No source CE, no source CutMix. ``prepare`` passes over the full target images with the source
model: class prior π = fraction of target pixels it predicts as each class (``class_prior``), and
the initial prototypes = running mean of per-image class-mean features (≥ 10 argmax pixels, count
capped at 3000), L2-normalised (``prototype_update``). The prototypes ``[C,F]`` are a trainable
extra (head lr = ``head_lr_mult``·lr = 5×) with an EMA copy in the teacher (α 0.999 at every update,
no ramp; the EMA model's buffers are copied from the student, as the released code does). Each
iteration, weak view = the loop's crop, strong view = ``augment.strong_augment`` of it:

* rectification: soft labels = the source model's softmax (``state.frozen``, the model at the start
  of the single round), reweighted by softmax(cos(f_ema, P_ema)/τ), τ = 0.08; done at the feature
  resolution and upsampled (nearest) to the crop; pixels whose normalised max < ``train_threshold``
  (0) are ignored;
* ``ce_weight``·CE(ŷ) + ``rce_weight``·RCE on the student's strong-view logits;
* self-labeling: ``sl_pixels`` random pixels per image of the L2-normalised EMA features, scored
  against the normalised prototypes; one Sinkhorn per image (π, ε = 0.05, 3 iterations) gives q;
  loss ``sl_weight``·mean over images of soft-CE(q, softmax(f·P̂ᵀ/τ)), which only trains the
  prototypes (f has no gradient);
* ``pc_weight``·KL(teacher ‖ student) of the prototype maps, both against the EMA prototypes (EMA weak
  view vs student strong view; the strong view is photometric only, so no warping is needed).

Left out (documented): the 65,536-feature queue, the second Sinkhorn term on the EMA logits and
the 0.001 supervised-contrastive term; stages 2-3 (self-distillation into a SimCLR R101).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sfda_deploy.adapt.augment import strong_augment
from sfda_deploy.adapt.losses import labelled_cross_entropy, prototype_consistency_loss, reverse_ce_loss, soft_ce_loss
from sfda_deploy.adapt.methods.base import LoopConfig, Method, Stage
from sfda_deploy.adapt.methods.common import cpu_generator, probs_of, target_pass
from sfda_deploy.adapt.pseudo_labels import (
    class_prior,
    prototype_logits,
    prototype_update,
    rectify_soft_labels,
    sinkhorn,
)


@dataclass(frozen=True)
class CpslConfig(LoopConfig):
    """CPSL stage-1 defaults (``parser_train.py``, ``adaptation_modelv2.py``)."""

    iters: int = 2000
    batch: int = 4
    crop: tuple[int, int] = (512, 896)
    optimizer: str = "sgd"
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 2e-4
    poly_power: float = 0.9
    head_lr_mult: float = 5.0
    ema_alpha: float = 0.999
    ema_ramp: bool = False          # 0.999 from the first update, model and prototypes alike
    teacher_buffers: str = "copy"   # the EMA model's buffers are copied from the student every update
    tau: float = 0.08
    train_threshold: float = 0.0
    ce_weight: float = 0.1
    rce_weight: float = 1.0
    sl_weight: float = 0.1
    sl_pixels: int = 256
    epsilon: float = 0.05
    sinkhorn_iters: int = 3
    pc_weight: float = 1.0          # README command: 5
    proto_min_pixels: int = 10
    proto_max_count: int = 3000


class Prototypes(nn.Module):
    """Trainable class prototypes ``[C,F]`` (initialised from ``store["prototypes"]`` at iteration 0)."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes, channels))


def _extras(model, cfg):
    return {"prototypes": Prototypes(model.num_classes, model.feature_channels)}


def prepare(ctx) -> dict:
    """π and the initial prototypes from the source model over the full target images."""
    cfg, c = ctx.cfg, ctx.meta.num_classes
    counts = torch.zeros(c, dtype=torch.float64)
    protos, n = None, torch.zeros(c, dtype=torch.int64)
    for probs, feats in target_pass(ctx, features=True):
        pred = probs.argmax(dim=1)
        counts += torch.bincount(pred.flatten().cpu(), minlength=c).double()
        small = F.interpolate(pred[:, None].float(), size=feats.shape[-2:], mode="nearest")[0, 0].long()
        if protos is None:
            protos = torch.zeros(c, feats.shape[1])
        protos, n = prototype_update(protos, n, feats[0].cpu(), small.cpu(), cfg.proto_min_pixels,
                                     cfg.proto_max_count)
    return {"prior": class_prior(counts).float(), "prototypes": F.normalize(protos, dim=1), "proto_counts": n}


def rectified_labels(soft, feats, prototypes, tau, threshold, size):
    """``rectify_soft_labels`` at the feature size ``[B,F,h,w]``, upsampled (nearest) to ``size``."""
    low = F.interpolate(soft, size=feats.shape[-2:], mode="bilinear", align_corners=False)
    labels = rectify_soft_labels(low, feats, prototypes, tau, threshold)
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def self_labeling_loss(feats, prototypes, prior, cfg, generator):
    """Sinkhorn self-labeling on ``cfg.sl_pixels`` random pixels per image of ``feats`` (no grad): one
    Sinkhorn per image, so the class prior is enforced image by image (the released loop), then the
    mean of the per-image losses."""
    b, f = feats.shape[:2]
    flat = F.normalize(feats.detach(), dim=1).flatten(2)  # [B,F,hw]
    hw = flat.shape[-1]
    idx = torch.stack([torch.randperm(hw, generator=generator)[: min(cfg.sl_pixels, hw)] for _ in range(b)])
    picked = torch.gather(flat, 2, idx.to(flat.device)[:, None].expand(-1, f, -1)).transpose(1, 2)  # [B,n,F]
    scores = picked @ F.normalize(prototypes, dim=1).t()  # [B,n,C]
    prior = prior.to(scores.device)
    losses = [soft_ce_loss(s / cfg.tau, sinkhorn(s.detach(), prior, cfg.epsilon, cfg.sinkhorn_iters))
              for s in scores]
    return torch.stack(losses).mean()


def step(batch, student, teacher, state, cfg: CpslConfig):
    images = batch["target"]["image"]
    store, protos, ema_protos = state.store, state.extras["prototypes"], state.teacher_extras["prototypes"]
    if not store.get("proto_loaded"):
        with torch.no_grad():
            for m in (protos, ema_protos):
                m.weight.copy_(store["prototypes"].to(m.weight))
        store["proto_loaded"] = True
    soft = probs_of(state.frozen, state, images)
    with torch.no_grad():
        _, t_feats = teacher(state.normalize(images), return_features=True)
        t_feats = t_feats.float()
    labels = rectified_labels(soft, t_feats, ema_protos.weight, cfg.tau, cfg.train_threshold, images.shape[-2:])
    logits, feats = student(state.normalize(strong_augment(images, state.generator)), return_features=True)
    logits, feats = logits.float(), feats.float()
    if state.want_preview:
        state.previews = {"image": images, "pseudo": labels, "pred": logits.argmax(1)}
    ce = labelled_cross_entropy(logits, labels)
    return {
        "ce": cfg.ce_weight * ce,
        "rce": cfg.rce_weight * reverse_ce_loss(logits, labels),
        "sl": cfg.sl_weight * self_labeling_loss(t_feats, protos.weight, store["prior"], cfg, cpu_generator(state)),
        # both maps against the EMA prototypes (the released code): this term trains the student only
        "pc": cfg.pc_weight * prototype_consistency_loss(prototype_logits(feats, ema_protos.weight, cfg.tau),
                                                         prototype_logits(t_feats, ema_protos.weight, cfg.tau)),
    }


METHOD = Method("cpsl", CpslConfig,
                (Stage("CP", step, prepare=prepare, teacher=True, extras=_extras, rounds=lambda cfg: 1,
                       description="prototype-rectified pseudo labels, Sinkhorn self-labeling, consistency"),),
                "CPSL (source-free stage 1): class-balanced prototypical self-labeling")
