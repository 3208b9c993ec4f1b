"""Prototype losses: ATP stage P's contrastive loss against class prototypes, CPSL's consistency of prototype
maps.

Pure functions: tensors in, scalar out. Logits ``[B,C,H,W]``, labels int64 ``[B,H,W]`` with
``IGNORE`` (255) = no label. The methods' maths: docs/methods.md.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from sfda_deploy.adapt.losses.base import empty_loss
from sfda_deploy.classes import IGNORE


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
        return empty_loss(features)
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


def prototype_consistency_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``KL(teacher ‖ student)`` of ``softmax`` maps, averaged per element (``[B,C,H,W]`` each).

    Used on the prototype maps ``cos(f, P)/τ`` of the EMA teacher (weak view) and the student
    (strong view): ``Σ q·(log q − log p) / (B·C·H·W)``.
    """
    log_q = F.log_softmax(teacher_logits, dim=1).detach()
    return (log_q.exp() * (log_q - F.log_softmax(student_logits, dim=1))).mean()
