"""Class prototypes (mean features per class) and what they label: one running-mean update (ATP's
pixel-weighted, CPSL's image-weighted with a capped count), CPSL's rectified labels and Sinkhorn
self-labeling.

Pure functions: probabilities / confidences in, prototypes, labels and soft assignments out. Probabilities
``[B,C,H,W]``; confidences (max probability) and labels ``[B,H,W]`` or 1-D, ``IGNORE`` (255) = no label.
The maths and the released code each rule follows: docs/methods.md."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sfda_deploy.classes import IGNORE


def class_feature_sums(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per-class feature sums and pixel counts of one batch (what processes all-reduce under DDP).

    Args:
        features: ``[N,D]``; labels: int64 ``[N]`` (255 rows are skipped).

    Returns:
        ``(sums [C,D], counts [C])`` in the features' dtype.
    """
    keep = labels != IGNORE
    f, y = features[keep], labels[keep]
    onehot = F.one_hot(y, num_classes).to(f.dtype)  # [N,C]
    return onehot.t() @ f, onehot.sum(dim=0)


def merge_class_prototypes(prototypes: Tensor, counts: Tensor, sums: Tensor, n_new: Tensor
                           ) -> tuple[Tensor, Tensor]:
    """Cumulative class means (SePiCo ``ProtoEstimator``): ``μ_c ← (1−w)μ_c + w·mean_new``.

    ``mean_new = sums_c / n_new_c``, ``w = n_new / (n_new + n_seen)``, ``n_seen ← n_seen + n_new``;
    classes absent from the batch (``n_new = 0``) are unchanged.

    Args:
        prototypes: ``[C,D]``; counts: ``[C]`` pixels seen so far (float); sums ``[C,D]`` and n_new
            ``[C]`` from ``class_feature_sums`` (summed over processes under DDP).

    Returns:
        ``(prototypes, counts)``, new tensors.
    """
    sums, n_new = sums.to(prototypes.dtype), n_new.to(prototypes.dtype)
    mean_new = sums / n_new.clamp(min=1).unsqueeze(1)
    w = (n_new / (n_new + counts).clamp(min=1)).unsqueeze(1)
    return prototypes * (1 - w) + mean_new * w, counts + n_new


def update_class_prototypes(prototypes: Tensor, counts: Tensor, features: Tensor, labels: Tensor
                            ) -> tuple[Tensor, Tensor]:
    """``merge_class_prototypes`` with one process's batch (``class_feature_sums``); shapes as there."""
    sums, n_new = class_feature_sums(features.to(prototypes.dtype), labels, prototypes.shape[0])
    return merge_class_prototypes(prototypes, counts, sums, n_new)


def prototype_update(prototypes: Tensor, counts: Tensor, features: Tensor, labels: Tensor,
                     min_pixels: int = 10, max_count: int = 3000) -> tuple[Tensor, Tensor]:
    """One image's contribution to CPSL's initial prototypes (running mean of image means, count capped).

    For each class with at least ``min_pixels`` argmax pixels in the image, its mean feature ``m``
    updates ``P_c ← (P_c·n_c + m)/(n_c + 1)``, ``n_c ← min(n_c + 1, max_count)``
    (``adaptation_modelv2.py:575-591``). L2-normalise at the end (``F.normalize``). This is
    ``merge_class_prototypes`` with the image's class means counted once each (``n_new = 1``).

    Args:
        prototypes: ``[C,F]``; counts: ``[C]``.
        features: ``[F,H,W]`` of one image; labels: int64 ``[H,W]`` argmax at the same size.

    Returns:
        ``(prototypes, counts)``, new tensors.
    """
    sums, pixels = class_feature_sums(features.flatten(1).t().to(prototypes.dtype), labels.flatten(),
                                      prototypes.shape[0])
    taken = (pixels >= min_pixels).to(prototypes.dtype)  # 1: the image counts once for the class
    means = sums / pixels.clamp(min=1).unsqueeze(1) * taken.unsqueeze(1)
    protos, _ = merge_class_prototypes(prototypes, counts.to(prototypes.dtype), means, taken)
    return protos, torch.where(taken > 0, (counts + 1).clamp(max=max_count), counts)


def prototype_logits(features: Tensor, prototypes: Tensor, tau: float) -> Tensor:
    """``cos(f, P_c)/τ`` at each pixel: ``[B,F,H,W]``, ``[C,F]`` → ``[B,C,H,W]``."""
    f = F.normalize(features, dim=1)
    p = F.normalize(prototypes, dim=1)
    return torch.einsum("bfhw,cf->bchw", f, p) / tau


def rectify_soft_labels(soft: Tensor, features: Tensor, prototypes: Tensor, tau: float = 0.08,
                        threshold: float = 0.0) -> Tensor:
    """CPSL's prototype rectification of soft pseudo labels.

    ``w = softmax(cos(f, P̂)/τ)`` over classes, ``r = w ⊙ p_soft``, ``ŷ = argmax r``; pixels where
    ``max(r/Σr) < threshold`` become 255 (``train_thred`` = 0: none).

    Args:
        soft: soft pseudo labels ``[B,C,H,W]`` (the starting model's softmax).
        features: ``[B,F,H,W]`` teacher features at the same size.
        prototypes: ``[C,F]``.

    Returns:
        int64 ``[B,H,W]``.
    """
    w = prototype_logits(features, prototypes, tau).softmax(dim=1)
    r = w * soft
    conf, pred = (r / r.sum(dim=1, keepdim=True).clamp_min(1e-12)).max(dim=1)
    return torch.where(conf < threshold, torch.full_like(pred, IGNORE), pred)


def sinkhorn(scores: Tensor, prior: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Sinkhorn-Knopp self-labeling with a class prior (CPSL ``adaptation_modelv2.py:404-424``).

    ``Q = exp(S/ε)ᵀ`` ``[C,N]``, divided by its total; ``iterations`` times: divide each row (class)
    by its sum, multiply it by ``π_c``, divide each column (sample) by its sum, divide by ``N``.
    Finally multiply by ``N`` and transpose, so each sample's row sums to 1 and class ``c`` receives
    about ``π_c`` of the mass.

    Args:
        scores: ``[N,C]`` similarities.
        prior: ``[C]`` class prior π (sums to 1).

    Returns:
        ``[N,C]`` soft assignments (no gradient).
    """
    with torch.no_grad():
        # Computed in the log domain: the same arithmetic, but exp(S/ε) neither overflows (un-normalised
        # prototypes) nor underflows to an all-zero column (a NaN in the linear-domain code).
        log_q = (scores.double() / epsilon).t()  # [C,N]
        log_q = log_q - log_q.logsumexp(dim=(0, 1))
        n = log_q.shape[1]
        log_pi = prior.to(log_q).log().view(-1, 1)
        absent = log_pi == -math.inf  # a class with π_c = 0 gets no mass (and no −inf − −inf NaN)
        for _ in range(iterations):
            log_q = torch.where(absent, -math.inf, log_q - log_q.logsumexp(dim=1, keepdim=True) + log_pi)
            log_q = log_q - log_q.logsumexp(dim=0, keepdim=True) - math.log(n)
        return (log_q + math.log(n)).exp().t().to(scores.dtype)


def class_prior(counts: Tensor) -> Tensor:
    """π: the fraction of target pixels predicted as each class, from per-class counts ``[C]``."""
    counts = counts.double()
    return counts / counts.sum().clamp_min(1)
