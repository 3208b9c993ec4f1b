"""Which pixels keep a pseudo label: LDBE's global and per-image masks, IAS's thresholded labels, NLNL's
selective masks, majority-vote label downscaling (ATP stage P).

Pure functions: probabilities / confidences in, labels and masks out. Probabilities ``[B,C,H,W]``; confidences
(max probability) and labels ``[B,H,W]`` or 1-D, ``IGNORE`` (255) = no label. Specs:
The maths and the released code each rule follows: docs/methods.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sfda_deploy.classes import IGNORE


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
