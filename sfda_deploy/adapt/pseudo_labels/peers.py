"""Pseudo-label selection rules of the peer methods (LDBE, PR-SFDA, HIAST/IAS, CPSL).

Pure functions: probabilities / confidences in, labels (255 = ignore), masks or thresholds out.
Shapes: probabilities ``[B,C,H,W]``; confidences (max probability) and labels ``[B,H,W]`` or 1-D.
Spec: ``shared/specs/peers.md`` (code citations there).
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = 255
# LDBE clamps every class threshold to this (``ldbe_trainer.py:166-168``): a threshold of 1 would
# select nothing under the strict ``p > τ`` comparison.
LDBE_MAX_THRESHOLD = 0.999999999


# ---------------------------------------------------------------------------------------- LDBE
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


def ldbe_global_mask(probs: Tensor, thresholds: Tensor, argmax_only: bool = False) -> Tensor:
    """LDBE's global (class-balanced) mask.

    Faithful default: a pixel counts when **any** class is above its own threshold,
    ``OR_c [p_c > τ_c]`` (``utils/func.py:33-54``), not only the argmax class. ``argmax_only``
    gives the usual CBST rule ``p_ŷ > τ_ŷ``.

    Args:
        probs: ``[B,C,H,W]`` probabilities.
        thresholds: ``[C]``.

    Returns:
        bool ``[B,H,W]``.
    """
    tau = thresholds.to(probs).view(1, -1, 1, 1)
    if argmax_only:
        conf, pred = probs.max(dim=1)
        return conf > tau.flatten()[pred]
    return (probs > tau).any(dim=1)


def ldbe_image_mask(probs: Tensor, rho: float) -> Tensor:
    """LDBE's per-image mask: the top-``ρ`` most confident pixels of each image.

    ``t = `` the ``⌊ρHW⌋``-th largest max-probability of the image (index ``⌊ρHW⌋ − 1`` of the
    descending sort; ``-1``, the smallest, when ``⌊ρHW⌋ = 0``), compared **strictly**: ``p_max > t``
    (``utils/func.py:57-72``), so ties at ``t`` and the ``⌊ρHW⌋``-th pixel itself are left out.

    Args:
        probs: ``[B,C,H,W]``.

    Returns:
        bool ``[B,H,W]``.
    """
    conf = probs.max(dim=1).values
    flat = conf.flatten(1)
    index = int(rho * flat.shape[1]) - 1
    t = flat.sort(dim=1, descending=True).values[:, index]
    return conf > t.view(-1, 1, 1)


def ldbe_pseudo_labels(probs: Tensor, thresholds: Tensor, rho: float, argmax_only: bool = False) -> Tensor:
    """LDBE's label: argmax on ``M_global ∪ M_image``, 255 elsewhere. ``[B,C,H,W]`` → ``[B,H,W]``."""
    keep = ldbe_global_mask(probs, thresholds, argmax_only) | ldbe_image_mask(probs, rho)
    return torch.where(keep, probs.argmax(dim=1), torch.full_like(keep, IGNORE, dtype=torch.long))


def ldbe_draw_k(num_classes: int, rng: random.Random, width: int = 3) -> int:
    """The complementary rank of one LDBE batch: ``k = ⌊C/2⌋ + U{−width..width}`` (both ends in)."""
    return num_classes // 2 + rng.randint(-width, width)


def kth_ranked_class(probs: Tensor, k: int) -> Tensor:
    """The class ranked ``k``-th by probability at each pixel (``k = 1`` is the argmax).

    Args:
        probs: ``[B,C,H,W]``.

    Returns:
        int64 ``[B,H,W]``.
    """
    return probs.topk(k, dim=1, sorted=True).indices[:, k - 1]


def random_other_class(labels: Tensor, num_classes: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """A class drawn uniformly from the ``C − 1`` classes other than ``labels`` (NLNL's c̄).

    ``labels`` equal to 255 get an arbitrary class (callers mask them out).

    Args:
        labels: int64 ``[...]``.

    Returns:
        int64, same shape.
    """
    offset = torch.randint(1, num_classes, labels.shape, generator=generator, device="cpu").to(labels.device)
    base = torch.where(labels == IGNORE, torch.zeros_like(labels), labels)
    return (base + offset) % num_classes


def selective_masks(probs: Tensor, labels: Tensor, pl_threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """NLNL's selective rules for noisy labels ``ŷ`` (``labels``, 255 = none).

    SelNL keeps pixels with ``p_ŷ > 1/C``; SelPL keeps pixels with ``p_ŷ > pl_threshold`` (0.5).

    Args:
        probs: ``[B,C,H,W]`` current probabilities.
        labels: int64 ``[B,H,W]``.

    Returns:
        ``(nl_mask, pl_mask)``, bool ``[B,H,W]`` each (False where the label is 255).
    """
    valid = labels != IGNORE
    p_y = probs.gather(1, torch.where(valid, labels, 0).unsqueeze(1)).squeeze(1)
    return valid & (p_y > 1.0 / probs.shape[1]), valid & (p_y > pl_threshold)


# ------------------------------------------------------------------------------------ IAS
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


def threshold_labels(probs: Tensor, thresholds: Tensor) -> Tensor:
    """Keep a pixel iff ``p_max ≥ θ_argmax`` (IAS's labelling), 255 elsewhere.

    Args:
        probs: ``[B,C,H,W]``.
        thresholds: ``[C]``.

    Returns:
        int64 ``[B,H,W]``.
    """
    conf, pred = probs.max(dim=1)
    keep = conf >= thresholds.to(conf)[pred]
    return torch.where(keep, pred, torch.full_like(pred, IGNORE))


# ---------------------------------------------------------------------------- HIAST / HPLA
def update_class_values(values: Tensor, confidences: Tensor, labels: Tensor, momentum: float = 0.99) -> Tensor:
    """HPLA class values: EMA of the mean confidence of each class's kept pseudo-label pixels.

    A class seen for the first time (value exactly 0) takes the batch mean directly; an absent
    class keeps its value (``pseudo_label_generator.py:95-105``).

    Args:
        values: ``[C]``.
        confidences: max-probabilities ``[...]``.
        labels: pseudo labels, same shape, 255 = not kept.

    Returns:
        New ``[C]``.
    """
    new = values.clone().double()
    conf, labels = confidences.flatten().double(), labels.flatten()
    for c in range(values.numel()):
        sel = labels == c
        if not sel.any():
            continue
        mean = conf[sel].mean()
        new[c] = mean if new[c] == 0 else new[c] * momentum + mean * (1 - momentum)
    return new


def hard_classes(values: Tensor, count: int = 14) -> Tensor:
    """The ``count`` classes with the lowest class value (ascending; stable on ties)."""
    return values.argsort(stable=True)[:count]


def hard_class_probs(values: Tensor, hard: Tensor) -> Tensor:
    """Sampling probability of each class: ``∝ (1 − v_c)²`` over the hard classes, 0 elsewhere.

    The code draws from all classes with ``(1 − v)² / Σ(1 − v)²`` and redraws until a hard class
    comes up, which is this distribution. Returns ``[C]`` summing to 1.
    """
    w = torch.zeros_like(values, dtype=torch.float64)
    w[hard] = (1 - values[hard].double()) ** 2
    total = w.sum()
    if total <= 0:  # every hard class at value 1: fall back to uniform over them
        w[hard] = 1.0
        total = w.sum()
    return w / total


# ------------------------------------------------------------------------------------ CPSL
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


def prototype_logits(features: Tensor, prototypes: Tensor, tau: float) -> Tensor:
    """``cos(f, P_c)/τ`` at each pixel: ``[B,F,H,W]``, ``[C,F]`` → ``[B,C,H,W]``."""
    f = F.normalize(features, dim=1)
    p = F.normalize(prototypes, dim=1)
    return torch.einsum("bfhw,cf->bchw", f, p) / tau


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


def prototype_update(prototypes: Tensor, counts: Tensor, features: Tensor, labels: Tensor,
                     min_pixels: int = 10, max_count: int = 3000) -> tuple[Tensor, Tensor]:
    """One image's contribution to CPSL's initial prototypes (running mean, count capped).

    For each class with at least ``min_pixels`` argmax pixels in the image, its mean feature ``m``
    updates ``P_c ← (P_c·n_c + m)/(n_c + 1)``, ``n_c ← min(n_c + 1, max_count)``
    (``adaptation_modelv2.py:575-591``). L2-normalise at the end (``F.normalize``).

    Args:
        prototypes: ``[C,F]``; counts: ``[C]``.
        features: ``[F,H,W]`` of one image; labels: int64 ``[H,W]`` argmax at the same size.

    Returns:
        ``(prototypes, counts)``, new tensors.
    """
    protos, counts = prototypes.clone(), counts.clone()
    flat = features.flatten(1)
    labels = labels.flatten()
    for c in range(protos.shape[0]):
        sel = labels == c
        if int(sel.sum()) < min_pixels:
            continue
        mean = flat[:, sel].mean(dim=1)
        n = counts[c].to(protos)
        protos[c] = (protos[c] * n + mean) / (n + 1)
        counts[c] = min(int(counts[c]) + 1, max_count)
    return protos, counts
