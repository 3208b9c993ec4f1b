"""Negative (complementary-label) learning: push down the probability of classes a pixel is NOT.

One function serves two families (docs/methods.md: ATP stage T, LDBE, PR-SFDA):

* ATP (``complementary=None``): the negative set of pixel ``i`` is every class whose (detached)
  probability is below ``threshold``; loss ``−ln clamp(1 − Σ_{c∈N_i} p_ic, 1e-8, 1)``, mean over
  **all** pixels (ATP's ``negative_cross_loss`` excludes nothing).
* The peers (LDBE's k-th ranked class, PR-SFDA's random other class): one complementary class per
  pixel, ``−ln clamp(1 − p_c̄, 1e-5, 1)``, mean over ``mask`` (all pixels when None).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

ATP_CLAMP = 1e-8
PEER_CLAMP = 1e-5


def negative_learning_loss(logits: Tensor, threshold: float = 0.04, *, complementary: Optional[Tensor] = None,
                           mask: Optional[Tensor] = None, clamp: Optional[float] = None) -> Tensor:
    """Negative-learning loss.

    Args:
        logits: ``[B,C,H,W]``.
        threshold: ATP's τ_n (used only when ``complementary`` is None): classes with ``p < τ_n``
            are the pixel's negatives; the selection is detached, ``p`` keeps its gradient.
        complementary: int64 ``[B,H,W]``, one class per pixel that the pixel is NOT (peers' form).
        mask: bool ``[B,H,W]``: average over these pixels only (0 with graph when empty).
        clamp: lower clamp of ``1 − p``; default 1e-8 (ATP form) or 1e-5 (peers' form).

    Returns:
        Scalar.
    """
    p = logits.softmax(dim=1)
    if complementary is None:
        negatives = (p < threshold).detach()
        p_neg = (p * negatives).sum(dim=1)
        clamp = ATP_CLAMP if clamp is None else clamp
    else:
        p_neg = p.gather(1, complementary.unsqueeze(1)).squeeze(1)
        clamp = PEER_CLAMP if clamp is None else clamp
    nl = -torch.log(torch.clamp(1 - p_neg, min=clamp, max=1.0))
    if mask is None:
        return nl.mean()
    return nl[mask].mean() if mask.any() else logits.sum() * 0.0
