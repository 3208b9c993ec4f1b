"""Cross-entropy losses with hard or soft targets: the empty-safe pixel CE every self-training method uses,
ATP's weighted CE, LDBE's confidence-weighted CE, CPSL's reverse and soft CE.

Pure functions: tensors in, scalar out. Logits ``[B,C,H,W]``, labels int64 ``[B,H,W]`` with ``IGNORE`` (255)
= no label. A CE over a region that can be empty returns ``base.empty_loss`` there, not NaN. Specs:
The methods' maths: docs/methods.md."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from sfda_deploy.adapt.losses.base import empty_loss
from sfda_deploy.classes import IGNORE


def labelled_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean pixel cross-entropy over the labelled pixels; ``empty_loss`` when none is labelled.

    The self-training CE of LDBE, PR-SFDA, HIAST and CPSL: a crop with no pseudo-labelled pixel
    contributes no CE (not the NaN of ``F.cross_entropy``'s 0/0).

    Args:
        logits: ``[B,C,H,W]``.
        labels: int64 ``[B,H,W]``, ``IGNORE`` = no label.

    Returns:
        Scalar.
    """
    if not (labels != IGNORE).any():
        return empty_loss(logits)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE)


def pixel_cross_entropy(logits: Tensor, labels: Tensor, weight: Optional[Tensor | float] = None,
                        over: str = "all") -> Tensor:
    """mmseg's cross-entropy as ATP uses it: per-pixel CE × weight, averaged over pixels.

    Args:
        logits: ``[B,C,H,W]``.
        labels: ``[B,H,W]``, 255 = ignore (contributes 0).
        weight: None, a scalar (ATP's batch confidence q) or a ``[B,H,W]`` map.
        over: ``all`` divides by all ``B·H·W`` pixels, ignored ones included (the released code);
            ``labelled`` divides by the non-ignored pixels (the clean variant).

    Returns:
        Scalar.
    """
    ce = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE)
    if weight is not None:
        ce = ce * weight
    if over == "all":
        return ce.mean()
    if over == "labelled":
        n = (labels != IGNORE).sum()
        return ce.sum() / n if n > 0 else empty_loss(logits)
    raise ValueError(f"over must be 'all' or 'labelled', got {over!r}")


def confidence_weighted_ce(logits: Tensor, labels: Tensor, confidences: Tensor, threshold: float = 0.97) -> Tensor:
    """LDBE's boundary-enhancement loss on a mixed batch (``ldbe_trainer.py:76-83``).

    ``w_i`` = fraction of image ``i``'s pixels whose (mixed) confidence is ``≥ threshold``; the
    loss is the mean, over the pixels whose CE is ``> 0``, of ``w_i · CE``.

    Args:
        logits: student logits on the mixed images ``[B,C,H,W]``.
        labels: mixed labels ``[B,H,W]`` (no 255).
        confidences: mixed confidences ``[B,H,W]`` (1 where a stored pseudo label was used).

    Returns:
        Scalar.
    """
    b = logits.shape[0]
    weight = (confidences.flatten(1) >= threshold).sum(dim=1).to(logits.dtype) / confidences[0].numel()
    ce = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE)
    weighted = weight.view(b, 1, 1) * ce
    positive = ce > 0
    return weighted[positive].mean() if positive.any() else empty_loss(logits)


RCE_CLAMP = 1e-4


def reverse_ce_loss(logits: Tensor, labels: Tensor, clamp: float = RCE_CLAMP) -> Tensor:
    """Reverse cross-entropy ``−Σ_c p_c log clamp(onehot_c, clamp, 1)`` over labelled pixels.

    With ``clamp = 1e-4`` this is ``−log(1e-4)·(1 − p_ŷ) = 9.2103·(1 − p_ŷ)`` per pixel; mean over
    the pixels whose label is not 255.
    """
    mask = labels != IGNORE
    if not mask.any():
        return empty_loss(logits)
    p_y = logits.softmax(dim=1).gather(1, torch.where(mask, labels, 0).unsqueeze(1)).squeeze(1)
    return (-math.log(clamp) * (1 - p_y))[mask].mean()


def soft_ce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """``−mean_i Σ_c q_ic log softmax(z_i)_c`` for logits/targets ``[N,C]`` (CPSL's self-labeling)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
