"""Losses of the peer methods (LDBE, PR-SFDA, HIAST, CPSL): logits (+labels, masks) → scalar.

Pure functions. Logits ``[B,C,H,W]``, labels int64 ``[B,H,W]`` with 255 = ignore. Every loss over
a region that can be empty returns a zero that keeps the graph (``logits.sum() * 0``) instead of
dividing by zero. Spec: ``shared/specs/peers.md``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = 255


def _zero(logits: Tensor) -> Tensor:
    return logits.sum() * 0.0


# -------------------------------------------------------------------------------- PR-SFDA
def max_squares_loss(logits: Tensor, image_weighted: bool = False, ratio: float = 0.2) -> Tensor:
    """Maximum-squares loss (Chen et al. 2019, ``MaxSquareLoss utils/loss.py``).

    Plain: ``−Σ p² / (2·B·C·H·W)`` (the mean of all probability squares, halved).
    Image-wise class-weighted: ``w_c = 1/max(n_c^ratio · N^(1−ratio), 1)`` per image, ``n_c`` its
    argmax pixel count of class ``c`` and ``N = H·W``; ``L = −Σ p²·w_argmax / (B·C)`` (no ½, as in
    the code).

    Args:
        logits: ``[B,C,H,W]``.
        image_weighted: use the class-weighted variant.
        ratio: the exponent (0.2).

    Returns:
        Scalar.
    """
    p = logits.softmax(dim=1)
    if not image_weighted:
        return -(p ** 2).mean() / 2
    b, c, h, w = p.shape
    pred = p.detach().argmax(dim=1).flatten(1)  # [B,HW]
    counts = F.one_hot(pred, c).sum(dim=1).to(p.dtype)  # [B,C]
    weights = 1.0 / torch.clamp(counts ** ratio * float(h * w) ** (1 - ratio), min=1.0)
    pixel_w = weights.gather(1, pred).view(b, 1, h, w)
    return -(p ** 2 * pixel_w).sum() / (b * c)


# ------------------------------------------------------------------------------------ LDBE
def ldbe_entropy_loss(logits: Tensor, double_softmax: bool = True) -> Tensor:
    """LDBE's entropy term, mean over all pixels.

    Faithful default (``ldbe_trainer.py:93-97``): ``−Σ s·log softmax(s)`` with ``s = softmax(z)``:
    the softmax is applied twice, so this is a cross-entropy between ``s`` and a flattened
    ``softmax(s)``, not the entropy. ``double_softmax=False`` gives Shannon ``H(p)``.
    """
    p = logits.softmax(dim=1)
    if double_softmax:
        return -(p * F.log_softmax(p, dim=1)).sum(dim=1).mean()
    return -(p * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


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
    return weighted[positive].mean() if positive.any() else _zero(logits)


# ------------------------------------------------------------------------------------ HIAST
def confident_kld_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """HIAST's regulariser on the confident region: KL to uniform up to a constant, with an extra 1/C.

    ``Σ_{conf} Σ_c (−(1/C)·log p_c) / (C·N_conf)`` (``self_training_segmentor.py:_kld``).
    """
    mask = labels != IGNORE
    if not mask.any():
        return _zero(logits)
    c = logits.shape[1]
    logp = F.log_softmax(logits, dim=1).permute(0, 2, 3, 1)[mask]  # [N,C]
    return (-logp / c).sum() / (c * logp.shape[0])


def ignored_entropy_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """HIAST's entropy on the ignored region: ``Σ_{ign} Σ_c (−p_c log p_c) / (C·N_ign)``."""
    mask = labels == IGNORE
    if not mask.any():
        return _zero(logits)
    c = logits.shape[1]
    logp = F.log_softmax(logits, dim=1).permute(0, 2, 3, 1)[mask]
    return -(logp.exp() * logp).sum() / (c * logp.shape[0])


def ignored_consistency_loss(student_logits: Tensor, teacher_probs: Tensor, labels: Tensor) -> Tensor:
    """HIAST's consistency on the non-pseudo-label region (soft CE teacher → student).

    ``Σ_{ign,c} (−q_c log p_c) / #nonzero terms`` (``losses.py:compute_loss_by_selected_pixel``:
    the denominator counts the non-zero entries, ≈ ``C·N_ign``).

    Args:
        student_logits: ``[B,C,H,W]`` (strong view).
        teacher_probs: ``[B,C,H,W]`` EMA teacher softmax (weak view), no gradient.
        labels: pseudo labels ``[B,H,W]``; the loss covers their 255 pixels.
    """
    mask = (labels == IGNORE).unsqueeze(1)
    terms = -F.log_softmax(student_logits, dim=1) * teacher_probs * mask
    nonzero = (terms != 0).sum()
    return terms.sum() / nonzero if nonzero > 0 else _zero(student_logits)


# ------------------------------------------------------------------------------------- CPSL
RCE_CLAMP = 1e-4


def reverse_ce_loss(logits: Tensor, labels: Tensor, clamp: float = RCE_CLAMP) -> Tensor:
    """Reverse cross-entropy ``−Σ_c p_c log clamp(onehot_c, clamp, 1)`` over labelled pixels.

    With ``clamp = 1e-4`` this is ``−log(1e-4)·(1 − p_ŷ) = 9.2103·(1 − p_ŷ)`` per pixel; mean over
    the pixels whose label is not 255.
    """
    mask = labels != IGNORE
    if not mask.any():
        return _zero(logits)
    p_y = logits.softmax(dim=1).gather(1, torch.where(mask, labels, 0).unsqueeze(1)).squeeze(1)
    return (-math.log(clamp) * (1 - p_y))[mask].mean()


def soft_ce_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """``−mean_i Σ_c q_ic log softmax(z_i)_c`` for logits/targets ``[N,C]`` (CPSL's self-labeling)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def prototype_consistency_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``KL(teacher ‖ student)`` of ``softmax`` maps, averaged per element (``[B,C,H,W]`` each).

    Used on the prototype maps ``cos(f, P)/τ`` of the EMA teacher (weak view) and the student
    (strong view): ``Σ q·(log q − log p) / (B·C·H·W)``.
    """
    log_q = F.log_softmax(teacher_logits, dim=1).detach()
    return (log_q.exp() * (log_q - F.log_softmax(student_logits, dim=1))).mean()
