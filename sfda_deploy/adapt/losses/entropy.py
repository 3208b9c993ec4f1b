"""Entropy losses and regularisers: normalised entropy (ATP stage A), maximum squares (PR-SFDA), LDBE's entropy
term, HIAST's entropy and KL-to-uniform terms.

Pure functions: tensors in, scalar out. Logits ``[B,C,H,W]``, labels int64 ``[B,H,W]`` with
``IGNORE`` (255) = no label. The methods' maths: docs/methods.md.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sfda_deploy.adapt.losses.base import empty_loss
from sfda_deploy.classes import IGNORE


def normalized_entropy(logits: Tensor) -> Tensor:
    """Per-pixel entropy divided by ``ln C``, in [0, 1].

    Args:
        logits: ``[B,C,H,W]``.

    Returns:
        ``[B,H,W]``.
    """
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1) / math.log(logits.shape[1])


def curriculum_entropy_terms(logits: Tensor, gamma: float = 5.0, alpha: float = 3.0, scale: float = 1e-3,
                             detach_weight: bool = False) -> tuple[Tensor, Tensor]:
    """Stage A's two terms (ATP ``EntropyLoss``, ``cross_entropy_loss.py:239-277``).

    ``L_cel = scale · mean_i[(1 − H_i)^γ · H_i]`` with ``H_i`` the normalised entropy. The weight
    ``(1 − H_i)^γ`` keeps its gradient in the released code (so descent lowers H only where
    H < 1/(γ+1)); ``detach_weight=True`` is the clean variant.
    ``L_div = −Σ_c m_c ln m_c / ln C`` with ``m_c = Σ_i w_i p_ic / (B·H·W)``, ``w_i = exp(−α H_i)``
    detached; ``m`` is divided by the pixel count, not by ``Σ w`` (as released).

    Args:
        logits: student logits ``[B,C,H,W]`` on the strong view.

    Returns:
        ``(L_cel, L_div)`` scalars.
    """
    c = logits.shape[1]
    p = logits.softmax(dim=1)
    h = normalized_entropy(logits)
    weight = (1 - h).pow(gamma)
    if detach_weight:
        weight = weight.detach()
    cel = scale * (weight * h).mean()
    w = torch.exp(-alpha * h).detach()
    m = (w.unsqueeze(1) * p).sum(dim=(0, 2, 3)) / h.numel()
    div = -torch.special.xlogy(m, m).sum() / math.log(c)
    return cel, div


def curriculum_entropy_loss(logits: Tensor, gamma: float = 5.0, alpha: float = 3.0, diversity_weight: float = 1e-4,
                            scale: float = 1e-3, detach_weight: bool = False) -> Tensor:
    """Stage A's total ``L_cel − diversity_weight · L_div`` (see ``curriculum_entropy_terms``).

    Args:
        logits: ``[B,C,H,W]``.

    Returns:
        Scalar.
    """
    cel, div = curriculum_entropy_terms(logits, gamma, alpha, scale, detach_weight)
    return cel - diversity_weight * div


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


def confident_kld_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """HIAST's regulariser on the confident region: KL to uniform up to a constant, with an extra 1/C.

    ``Σ_{conf} Σ_c (−(1/C)·log p_c) / (C·N_conf)`` (``self_training_segmentor.py:_kld``).
    """
    mask = labels != IGNORE
    if not mask.any():
        return empty_loss(logits)
    c = logits.shape[1]
    logp = F.log_softmax(logits, dim=1).permute(0, 2, 3, 1)[mask]  # [N,C]
    return (-logp / c).sum() / (c * logp.shape[0])


def ignored_entropy_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """HIAST's entropy on the ignored region: ``Σ_{ign} Σ_c (−p_c log p_c) / (C·N_ign)``."""
    mask = labels == IGNORE
    if not mask.any():
        return empty_loss(logits)
    c = logits.shape[1]
    logp = F.log_softmax(logits, dim=1).permute(0, 2, 3, 1)[mask]
    return -(logp.exp() * logp).sum() / (c * logp.shape[0])
