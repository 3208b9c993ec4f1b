"""Stage D: distil a student of the user's ``--arch`` from a black-box source's soft predictions.

ATP says it "extends to black-box source models through knowledge distillation" but releases no
code for it (docs/blackbox.md), so this recipe is ours. It is the first stage of every
``adapt --source model.onnx`` run; the chosen method's stages (ATP's A, T, P...) then adapt the
distilled student as if it were a white-box source. ``--method distill`` runs this stage alone.

Recipe (defaults of ``DistillConfig``; override with ``--set distill.<key>=v``, or ``--set key=v``
and ``--iters/--lr/--batch/--crop`` under ``--method distill``):

* Loss: per-pixel KL(softmax(z_t/T) ‖ softmax(z_s/T)) · T², T = 2
  (``losses.distillation_loss``). T = 2 softens the source's over-confident predictions on the
  shifted target so the student also learns which classes the source confuses (the "dark
  knowledge" a hard label discards) while the argmax still dominates the target; T² keeps the
  gradient's size independent of T. A source that returns only labels degrades gracefully to
  cross-entropy on them.
* Data: target images only (no source data exists here), the loop's weak view (random crop +
  horizontal flip). Teacher and student see the SAME pixels: distillation matches the source's
  function on the target distribution; photometric jitter on the student alone would ask for an
  invariance the source does not have (that is the adaptation stages' job). The crop defaults to
  the source's fixed input size when it has one (resizing a crop to it would change the scale the
  source sees), else 256×512.
* Optimisation: the student starts from random weights (no pretrained weights are available
  offline), which is supervised training from scratch rather than fine-tuning, so it takes the
  source-training regime of ``train-source``: AdamW, lr 1e-3, batch 8, weight decay 0.01, poly
  decay, and NO 10× head multiplier (that rule protects pretrained features; there are none).
  4000 iterations (Cityscapes' 2975 training images at batch 8 are 372 iterations an epoch, so
  about 11 epochs).
* Cost: one source query per image per iteration, batched; the source never sees gradients.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sfda_deploy.adapt.losses import distillation_loss
from sfda_deploy.adapt.methods.base import LoopConfig, Method, Stage
from sfda_deploy.errors import SfdaError


@dataclass(frozen=True)
class DistillConfig(LoopConfig):
    """Stage D's defaults (see the module docstring for why).

    Attributes:
        temperature: T of the softmax on both sides; the loss is multiplied by T².
    """

    iters: int = 4000
    batch: int = 8
    crop: tuple[int, int] = (256, 512)
    lr: float = 1e-3
    weight_decay: float = 0.01
    head_lr_mult: float = 1.0
    warmup_iters: int = 0
    temperature: float = 2.0
    checkpoint_every: int = 500


def make_step(teacher):
    """Stage D's step bound to a frozen ``teacher`` (``images 0-255 [B,3,H,W] → logits [B,C,H,W]``)."""

    def step(batch, student, _ema_teacher, state, cfg):
        images = batch["target"]["image"]
        with torch.no_grad():
            target = teacher(images)
        logits = student(state.normalize(images))
        if state.want_preview:
            state.previews = {"image": images, "pseudo": target.argmax(1), "pred": logits.argmax(1)}
        return {"kd": distillation_loss(logits, target, cfg.temperature)}

    return step


def distill_stage(teacher, cfg: DistillConfig) -> Stage:
    """Stage ``D`` distilling from ``teacher`` with its own config (it precedes any method's stages)."""
    return Stage("D", make_step(teacher), cfg=cfg,
                 description=f"distillation from a black-box source (KL, T={cfg.temperature})")


def _needs_source(batch, student, teacher, state, cfg):
    raise SfdaError("method 'distill' needs a black-box source: pass --source model.onnx --arch ARCH")


METHOD = Method("distill", DistillConfig,
                (Stage("D", _needs_source, description="distillation from a black-box source"),),
                "distil a student (--arch) from a black-box .onnx source; no adaptation")
