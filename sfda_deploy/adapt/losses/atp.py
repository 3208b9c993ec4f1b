"""ATP's losses (Align, Teach, Propagate; spec ``shared/specs/atp.md``): tensors in, scalar out.

Logits ``[B,C,H,W]``, labels int64 ``[B,H,W]`` with 255 = ignore. The negative-learning term is
``sfda_deploy.adapt.losses.negative.negative_learning_loss``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = 255


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
        return ce.sum() / n if n > 0 else logits.sum() * 0.0
    raise ValueError(f"over must be 'all' or 'labelled', got {over!r}")


def prototype_contrastive_loss(features: Tensor, labels: Tensor, prototypes: Tensor, temperature: float = 100.0,
                               reg_weight: float = 1.0, unit_prototypes: bool = False) -> Tensor:
    """Stage P's L_scl (SePiCo ``proto_contrastive`` + ``proto_reg``, as ATP configures it).

    ``CE(f·μᵀ / T, y)`` averaged over the labelled rows, plus
    ``reg_weight · Σ_c log softmax(mean(f)·μᵀ / T)_c / (C ln C)`` (mean over the labelled rows).
    As released (unit features, raw class means, T = 100) every logit is within ±0.01, so the loss sits
    at ≈ ln C − 1 whatever the features do; the clean form is ``unit_prototypes=True`` with a small T
    (0.1): logits are cosine similarities / T, the same scale for every class however spread it is.

    Args:
        features: ``[N,D]`` L2-normalised projections (student, strong hard view).
        labels: int64 ``[N]`` (downscaled pseudo labels; 255 rows are dropped).
        prototypes: ``[C,D]`` class means (no gradient; not re-normalised unless ``unit_prototypes``).
        temperature: T (100 in the released config).
        unit_prototypes: L2-normalise the prototypes first (a never-seen class's zero row stays zero).

    Returns:
        Scalar (0 with graph when no row is labelled).
    """
    keep = labels != IGNORE
    if not keep.any():
        return features.sum() * 0.0
    f, y = features[keep], labels[keep]
    mu = prototypes.detach().to(f.dtype)
    if unit_prototypes:
        mu = F.normalize(mu, dim=1)
    loss = F.cross_entropy(f @ mu.t() / temperature, y)
    if reg_weight > 0:
        c = mu.shape[0]
        reg = F.log_softmax(f.mean(dim=0, keepdim=True) @ mu.t() / temperature, dim=1).sum() / (c * math.log(c))
        loss = loss + reg_weight * reg
    return loss
