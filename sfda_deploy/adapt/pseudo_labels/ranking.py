"""Rankings of images, classes and pixels: ATP's easy/hard split by entropy, LDBE's k-th ranked class, NLNL's
random other class, HPLA's hard classes.

Pure functions: probabilities / confidences in, ranks, classes and sampling probabilities out. Probabilities
``[B,C,H,W]``; confidences (max probability) and labels ``[B,H,W]`` or 1-D, ``IGNORE`` (255) = no label.
The maths and the released code each rule follows: docs/methods.md."""
from __future__ import annotations

import random
from typing import Optional

import torch
from torch import Tensor

from sfda_deploy.adapt.losses.entropy import normalized_entropy
from sfda_deploy.classes import IGNORE


def image_entropy_scores(logits: Tensor) -> Tensor:
    """ATP's ranking score per image: mean over (C,H,W) of ``−p log₂ p / log₂ C``.

    That is the mean normalised pixel entropy divided by C (``tools/entropy_rank.py``).

    Args:
        logits: ``[B,C,H,W]``.

    Returns:
        ``[B]``.
    """
    return normalized_entropy(logits.float()).mean(dim=(1, 2)) / logits.shape[1]


def entropy_rank_split(scores: Tensor, easy_ratio: float = 0.3) -> tuple[Tensor, Tensor]:
    """Easy / hard split: the ``int(N·easy_ratio)`` lowest scores are easy, the rest hard.

    Ties keep dataset order (stable sort).

    Args:
        scores: ``[N]`` per-image entropy scores.

    Returns:
        ``(easy indices, hard indices)``, int64, each in ascending score order.
    """
    order = torch.sort(torch.as_tensor(scores), stable=True).indices
    cut = int(order.numel() * easy_ratio)
    return order[:cut], order[cut:]


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
