"""ATP's selection rules (spec ``shared/specs/atp.md`` §1c): entropy ranking, confidence weight,
majority-vote label downscaling, cumulative class prototypes. Pure tensor functions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sfda_deploy.adapt.losses.atp import normalized_entropy

IGNORE = 255


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


def confidence_weight(probs: Tensor, threshold: float = 0.968) -> Tensor:
    """ATP/DACS pseudo weight q: the share of the batch's pixels whose max probability is ≥ threshold.

    Args:
        probs: teacher softmax ``[B,C,H,W]``.

    Returns:
        Scalar in [0, 1] (one value for the whole batch).
    """
    return (probs.max(dim=1).values >= threshold).float().mean()


def scaled_rows(rows: int, height: int, reference: int) -> int:
    """``rows`` given for crops ``reference`` pixels high, scaled to crops ``height`` high (round half up).

    ATP's 15/120 ignored rows are Cityscapes' at 640-px crops; at 640 this returns them unchanged.
    """
    return int(rows * height / reference + 0.5)


def border_weight(q: Tensor | float, shape: tuple[int, int, int], top: int = 15, bottom: int = 120,
                  device=None) -> Tensor:
    """Hard-image pixel weight: ``q`` everywhere except ``top`` first and ``bottom`` last rows (0).

    ATP zeroes these rows of Cityscapes crops (ego-vehicle and sky band, ``experiments.py:90-92``).

    Args:
        q: the batch confidence (scalar).
        shape: ``(B, H, W)``.

    Returns:
        float ``[B,H,W]``.
    """
    b, h, w = shape
    out = torch.ones(b, h, w, device=device) * torch.as_tensor(q, device=device, dtype=torch.float32)
    out[:, :top] = 0
    if bottom > 0:
        out[:, max(h - bottom, 0):] = 0
    return out


def downscale_labels(labels: Tensor, factor: int, num_classes: int, min_ratio: float = 0.75) -> Tensor:
    """Majority vote over ``factor×factor`` blocks; 255 where the winner's share is < ``min_ratio``.

    Ignored pixels vote for their own bin (so they dilute the winner and win as 255).

    Args:
        labels: int64 ``[B,H,W]`` (255 = ignore); H and W are cut to multiples of ``factor``.

    Returns:
        int64 ``[B,H//factor,W//factor]``.
    """
    if factor <= 1:
        return labels.clone()
    b, h, w = labels.shape
    lab = labels[:, : h // factor * factor, : w // factor * factor]
    lab = torch.where(lab == IGNORE, num_classes, lab)
    onehot = F.one_hot(lab, num_classes + 1).permute(0, 3, 1, 2).float()
    share, winner = F.avg_pool2d(onehot, factor).max(dim=1)
    winner = torch.where(winner == num_classes, IGNORE, winner)
    return torch.where(share < min_ratio, IGNORE, winner)


def update_class_prototypes(prototypes: Tensor, counts: Tensor, features: Tensor, labels: Tensor
                            ) -> tuple[Tensor, Tensor]:
    """Cumulative class means (SePiCo ``ProtoEstimator``): ``μ_c ← (1−w)μ_c + w·mean_new``.

    ``w = n_new / (n_new + n_seen)``, ``n_seen ← n_seen + n_new``; classes absent from the batch are
    unchanged.

    Args:
        prototypes: ``[C,D]``; counts: ``[C]`` pixels seen so far (float).
        features: ``[N,D]``; labels: int64 ``[N]`` (255 rows are skipped).

    Returns:
        ``(prototypes, counts)``, new tensors.
    """
    c = prototypes.shape[0]
    keep = labels != IGNORE
    f, y = features[keep].to(prototypes.dtype), labels[keep]
    onehot = F.one_hot(y, c).to(prototypes.dtype)  # [N,C]
    n_new = onehot.sum(dim=0)
    sums = onehot.t() @ f
    mean_new = sums / n_new.clamp(min=1).unsqueeze(1)
    w = (n_new / (n_new + counts).clamp(min=1)).unsqueeze(1)
    return prototypes * (1 - w) + mean_new * w, counts + n_new
