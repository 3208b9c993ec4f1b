"""Confidence thresholds per class: LDBE's class-balanced pools, IAS's instance-adaptive update.

Pure functions: probabilities / confidences in, thresholds out. Probabilities ``[B,C,H,W]``; confidences
(max probability) and labels ``[B,H,W]`` or 1-D, ``IGNORE`` (255) = no label. Specs:
The maths and the released code each rule follows: docs/methods.md.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

# LDBE clamps every class threshold to this (``ldbe_trainer.py:166-168``): a threshold of 1 would
# select nothing under the strict ``p > τ`` comparison.
LDBE_MAX_THRESHOLD = 0.999999999


def ldbe_subsample_confidences(probs: Tensor, every: int = 5) -> list[Tensor]:
    """One image's contribution to LDBE's class-threshold pools.

    For each argmax class, the image's max-probabilities of that class sorted ascending and every
    ``every``-th kept (the released code does this "to reduce memory"; it also shapes the quantile).

    Args:
        probs: softmax probabilities ``[C,H,W]`` of one image.
        every: subsampling stride (5 in the code).

    Returns:
        ``C`` 1-D tensors (empty for classes the image does not predict).
    """
    conf, pred = probs.max(dim=0)
    conf, pred = conf.flatten(), pred.flatten()
    out = []
    for c in range(probs.shape[0]):
        values = conf[pred == c].sort().values
        out.append(values[::every])
    return out


def ldbe_class_threshold(confidences: Tensor, rho: float) -> Tensor:
    """One class's LDBE threshold from its pooled (subsampled) confidences.

    With ``a`` sorted ascending and ``N = len(a)``: ``τ = a[-⌊N·ρ⌋]``; when ``⌊N·ρ⌋ = 0`` Python's
    ``a[-0] = a[0]`` gives the **minimum** (the released code's edge case, kept on purpose).
    Clamped to ``≤ 0.999999999``. A class with no confidence at all gets ``+inf`` (never selected).

    Args:
        confidences: 1-D tensor of max-probabilities of the pixels predicted as the class.
        rho: class-balanced proportion (``cb_prop``: 0.10 in round 0, +0.05 per round).

    Returns:
        0-d float tensor.
    """
    a = confidences.flatten().double().sort().values
    if a.numel() == 0:
        return torch.tensor(float("inf"), dtype=torch.float64)
    index = int(a.numel() * rho)
    return a[-index].clamp(max=LDBE_MAX_THRESHOLD)


def ldbe_class_thresholds(pools: Sequence[Tensor], rho: float) -> Tensor:
    """``ldbe_class_threshold`` for every class: ``pools`` has ``C`` 1-D tensors → ``[C]``."""
    return torch.stack([ldbe_class_threshold(p, rho) for p in pools]).float()


def _quantile_linear(values: Tensor, q: float) -> Tensor:
    """``numpy.quantile(values, q)`` with the default linear interpolation (1-D, any length)."""
    v = values.sort().values
    pos = q * (v.numel() - 1)
    lo = int(pos)  # pos ≥ 0
    hi = min(lo + 1, v.numel() - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def ias_update(thresholds: Tensor, confidences: Tensor, labels: Tensor, alpha: float, beta: float,
               gamma: float, half_precision: bool = False) -> Tensor:
    """One Instance-Adaptive-Selector step (IAST/HIAST ``pseudo_label_generator.py:168-213``).

    Per class ``c``: ``ψ_c`` = linear-interpolated quantile of ``{θ_c} ∪ {confidences with label c}``
    at ``q = 1 − α·θ_c^γ``; ``θ_c ← β·θ_c + (1 − β)·ψ_c``; a threshold reaching 1 becomes 0.999.
    A class absent from the batch keeps its threshold (its list is ``{θ_c}`` alone).

    Args:
        thresholds: ``[C]``, the running θ (0.9 at the start of a round).
        confidences: 1-D max-probabilities of the batch's pixels.
        labels: 1-D argmax classes of the same pixels.
        half_precision: cast the confidences to float16 first, as the released code does.

    Returns:
        New thresholds ``[C]`` (float64).
    """
    theta = thresholds.double()
    conf = confidences.flatten()
    if half_precision:
        conf = conf.half()
    conf = conf.double()
    labels = labels.flatten()
    new = theta.clone()
    for c in labels.unique().tolist():
        pool = torch.cat([theta[c:c + 1], conf[labels == c]])
        psi = _quantile_linear(pool, 1.0 - alpha * float(theta[c]) ** gamma)
        new[c] = beta * theta[c] + (1.0 - beta) * psi
    new[new >= 1] = 0.999
    return new
