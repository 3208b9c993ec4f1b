"""Pixel weights of pseudo-labelled losses: ATP's batch confidence q and its ignored border rows.

Pure functions: probabilities / confidences in, weights out. Probabilities ``[B,C,H,W]``; confidences
(max probability) and labels ``[B,H,W]`` or 1-D, ``IGNORE`` (255) = no label. Specs:
The maths and the released code each rule follows: docs/methods.md.
"""
from __future__ import annotations

import torch
from torch import Tensor


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
