"""The update rules' maths (pure: tensors in, tensors out). Logits and probabilities are ``[B,C,H,W]``.

- TENT (Wang et al., ICLR 2021): mean entropy of the predictions (here in units of ``ln C``).
- ``anchored`` (ours): the entropy of the reliable pixels only (normalised entropy below a bound, as
  EATA selects samples) plus an L2 pull of the adapted parameters towards the anchor's.
- CoTTA (Wang et al., CVPR 2022): soft cross-entropy to the weight-averaged teacher's prediction, or to
  the average over flipped/rescaled views when the anchor is unsure, and the stochastic restore of a
  share ``p`` of the weights to the source's.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sfda_deploy.adapt.losses import normalized_entropy, soft_ce_loss


def tent_loss(logits: Tensor) -> Tensor:
    """Mean normalised entropy of the pixels' predictions (``[B,C,H,W]`` → scalar in [0, 1])."""
    return normalized_entropy(logits).mean()


def reliable_entropy_loss(logits: Tensor, max_entropy: float) -> Tensor:
    """Mean normalised entropy over the pixels whose normalised entropy is below ``max_entropy``.

    Unsure pixels are where entropy minimisation reinforces errors, so they carry no gradient. With no
    reliable pixel the loss is a zero that still belongs to the graph.
    """
    ent = normalized_entropy(logits)
    keep = ent.detach() < max_entropy
    return ent[keep].mean() if keep.any() else ent.sum() * 0.0


def anchor_penalty(params: Sequence[Tensor], anchor_params: Sequence[Tensor]) -> Tensor:
    """``Σ_k ‖θ_k − θ⁰_k‖²`` over matching parameter tensors (L2-SP towards the anchor)."""
    return sum(((p - a.detach()) ** 2).sum() for p, a in zip(params, anchor_params))


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """``−mean_pixels Σ_c q_c log softmax(z)_c`` for ``[B,C,H,W]`` logits and target probabilities."""
    c = logits.shape[1]
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, c)  # noqa: E731 - [B,C,H,W] → [BHW, C]
    return soft_ce_loss(flat(logits), flat(target_probs.detach()))


def view_averaged_probs(predict: Callable[[Tensor], Tensor], x: Tensor, scales: Sequence[float],
                        flip: bool) -> Tensor:
    """Softmax averaged over rescaled (and horizontally flipped) views, mapped back to ``x``'s size.

    Args:
        predict: input ``[B,3,h,w]`` → logits ``[B,C,h,w]``.
        x: ``[B,3,H,W]`` network input.
        scales: resize factors of the views (1.0 = as is).
        flip: add the mirrored view of every scale.

    Returns:
        ``[B,C,H,W]`` probabilities.
    """
    size, total, n = x.shape[-2:], 0.0, 0
    for s in scales:
        view = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        for mirrored in ((False, True) if flip else (False,)):
            logits = predict(view.flip(-1) if mirrored else view)
            logits = logits.flip(-1) if mirrored else logits
            if logits.shape[-2:] != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            total, n = total + logits.softmax(1), n + 1
    return total / n


def cotta_targets(teacher_probs: Tensor, averaged_probs: Tensor, anchor_probs: Tensor, threshold: float) -> Tensor:
    """CoTTA's pseudo labels: per image, the view-averaged teacher prediction when the anchor's mean
    confidence (max probability, averaged over the image) is below ``threshold``, else the teacher's.

    All ``[B,C,H,W]`` probabilities; returns ``[B,C,H,W]``.
    """
    unsure = anchor_probs.max(1).values.flatten(1).mean(1) < threshold
    return torch.where(unsure.view(-1, 1, 1, 1), averaged_probs, teacher_probs)


def restore_mask(shape: torch.Size, p: float, generator: torch.Generator) -> Tensor:
    """Boolean ``shape`` mask, each element true with probability ``p`` (the weights to restore)."""
    return torch.rand(shape, generator=generator) < p


def restore(param: Tensor, source: Tensor, mask: Tensor) -> Tensor:
    """``param`` with the elements under ``mask`` replaced by the source's."""
    return torch.where(mask.to(param.device), source, param)


@torch.no_grad()
def stochastic_restore_(params: Sequence[Tensor], sources: Sequence[Tensor], p: float,
                        generator: torch.Generator) -> None:
    """In place: every element of every parameter goes back to its source value with probability ``p``."""
    if p <= 0:
        return
    for param, source in zip(params, sources):
        param.copy_(restore(param, source, restore_mask(param.shape, p, generator)))
