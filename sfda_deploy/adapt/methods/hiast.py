"""HIAST (IAST + consistency + hard-class paste; TPAMI 2025), docs/methods.md.

One stage ``ST`` of ``rounds`` (3) self-training rounds in ``cfg.iters`` iterations. Round 0's
pseudo-label model is the source model; round r + 1's is the EMA teacher at the end of round r
(``snapshot="teacher"``), the student continuing. At each round start θ_c = 0.9 and the learning
rate steps to ``round_lr[r] / round_lr[0]`` (3e-6, 2e-6, 1e-6 in HIAST). Each iteration:

1. IAS on the weak crop: the frozen round model's confidences update θ (``ias_update`` with α, β,
   γ, optionally the float16 cast), then the batch is labelled with the updated θ
   (``threshold_labels``); class values v_c follow (``update_class_values``).
2. HPLA copy-paste (``paste_prob``): draw a class ∝ (1 − v_c)² among the ``hard_count`` hardest;
   the donor is the next image of the batch (``(i+1) mod B``) when its pseudo labels contain that
   class, and **all** its hard-class pixels are pasted (image and label).
3. Strong view = ``augment.strong_augment`` of the (pasted) weak view; the student's strong-view
   logits take CE(ŷ) + λ_k·KL-to-uniform on labelled pixels + λ_e·entropy on ignored pixels +
   ``cst_weight``·soft CE from the EMA teacher's weak-view softmax on ignored pixels.

Choices where this differs from the released code (documented): pseudo labels are made online on
the training crop (IAS's per-batch order kept: update, then label) rather than in an offline pass
at 768×1536; the paste donor is drawn from the current batch instead of the whole target set; the
strong view is the loop's DACS-style photometric augmentation (not HIAST's 3-of-8 RandAugment);
AdamW with wd 5e-4 and poly decay stand in for Adam + L2 and cosine decay.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfda_deploy.adapt.augment import strong_augment
from sfda_deploy.adapt.losses import (
    confident_kld_loss,
    ignored_consistency_loss,
    ignored_entropy_loss,
    labelled_cross_entropy,
)
from sfda_deploy.adapt.methods.base import LoopConfig, Method, Stage
from sfda_deploy.adapt.methods.common import cpu_generator, probs_of
from sfda_deploy.adapt.mixing import paste_classes
from sfda_deploy.adapt.pseudo_labels import (
    hard_class_probs,
    hard_classes,
    ias_update,
    threshold_labels,
    update_class_values,
)


@dataclass(frozen=True)
class HiastConfig(LoopConfig):
    """HIAST defaults (``configs/sl_1.yaml``, ``hiast_setting.yaml``)."""

    iters: int = 2000
    batch: int = 2
    crop: tuple[int, int] = (512, 1024)
    optimizer: str = "adamw"
    lr: float = 3e-6
    weight_decay: float = 5e-4
    poly_power: float = 1.0
    ema_alpha: float = 0.999
    ema_ramp: bool = False          # 0.999 from the first update (utils.py update_ema_model)
    teacher_buffers: str = "copy"
    teacher_bn: str = "eval"
    rounds: int = 3
    round_lr: tuple[float, ...] = (3e-6, 2e-6, 1e-6)
    theta0: float = 0.9
    alpha: float = 0.5
    beta: float = 0.9
    gamma: float = 8.0
    half_precision: bool = True     # the code casts the confidences to float16
    kld_weight: float = 0.1
    ent_weight: float = 1.0         # IAST: 3.0
    cst_weight: float = 0.5
    paste_prob: float = 1.0
    hard_count: int = 14
    value_momentum: float = 0.99


def round_start(ctx, store: dict, r: int) -> dict:
    """Reset θ to ``theta0``; set the round's lr scale; class values persist across rounds."""
    cfg = ctx.cfg
    c = ctx.meta.num_classes
    store = dict(store)
    store["theta"] = torch.full((c,), cfg.theta0, dtype=torch.float64)
    store.setdefault("values", torch.zeros(c, dtype=torch.float64))
    lrs = cfg.round_lr
    store["lr_scale"] = lrs[min(r, len(lrs) - 1)] / lrs[0]
    return store


def hpla_paste(images, labels, values, hard_count, generator):
    """Paste the next image's hard-class pixels onto each image whose drawn hard class it contains.

    Args:
        images: float ``[B,3,H,W]``; labels: ``[B,H,W]`` pseudo labels; values: class values ``[C]``.

    Returns:
        ``(images, labels)`` new tensors.
    """
    hard = hard_classes(values, hard_count)
    probs = hard_class_probs(values, hard)
    out_i, out_l = images.clone(), labels.clone()
    b = images.shape[0]
    for i in range(b):
        j = (i + 1) % b
        c = int(torch.multinomial(probs.float(), 1, generator=generator))
        if j == i or not bool((labels[j] == c).any()):
            continue
        out_i[i], out_l[i], _ = paste_classes(images[i], labels[i], images[j], labels[j], hard.to(labels.device))
    return out_i, out_l


def step(batch, student, teacher, state, cfg: HiastConfig):
    images = batch["target"]["image"]
    store = state.store
    probs = probs_of(state.frozen, state, images)
    conf, pred = probs.max(dim=1)
    store["theta"] = ias_update(store["theta"], conf.cpu(), pred.cpu(), cfg.alpha, cfg.beta, cfg.gamma,
                                cfg.half_precision)
    labels = threshold_labels(probs, store["theta"])
    store["values"] = update_class_values(store["values"], conf.cpu(), labels.cpu(), cfg.value_momentum)
    g = cpu_generator(state)
    if cfg.paste_prob > 0 and float(torch.rand((), generator=g)) < cfg.paste_prob:
        images, labels = hpla_paste(images, labels, store["values"], cfg.hard_count, g)
    strong = strong_augment(images, state.generator)
    logits = student(state.normalize(strong)).float()
    with torch.no_grad():
        t_probs = teacher(state.normalize(images)).float().softmax(dim=1)
    if state.want_preview:
        state.previews = {"image": images, "pseudo": labels, "pred": logits.argmax(1)}
    ce = labelled_cross_entropy(logits, labels)
    return {
        "ce": ce,
        "kld": cfg.kld_weight * confident_kld_loss(logits, labels),
        "ent": cfg.ent_weight * ignored_entropy_loss(logits, labels),
        "cst": cfg.cst_weight * ignored_consistency_loss(logits, t_probs, labels),
    }


METHOD = Method("hiast", HiastConfig,
                (Stage("ST", step, teacher=True, rounds=lambda cfg: cfg.rounds, round_start=round_start,
                       snapshot="teacher",
                       description="instance-adaptive pseudo labels, regularisation, consistency, paste"),),
                "HIAST: instance-adaptive self-training with hard-class paste (source-free)")
