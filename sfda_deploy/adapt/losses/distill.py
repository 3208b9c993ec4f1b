"""Knowledge distillation from a black-box source's predictions (Hinton et al. 2015, per pixel).

Pure functions on logits ``[B,C,H,W]``. The teacher side may be logits, log-probabilities, or
``log(one-hot)`` with ``-inf`` for impossible classes (a source that returns only a label map):
every per-pixel shift of the teacher's logits gives the same tempered distribution, so one
function serves APIs that return logits, probabilities (pass their log) or masks. HIAST's consistency
of the student with its EMA teacher's probabilities on the unlabelled region is here too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sfda_deploy.adapt.losses.base import empty_loss
from sfda_deploy.classes import IGNORE


def tempered_probs(teacher_logits: Tensor, temperature: float) -> Tensor:
    """``softmax(z / T)`` over classes (dim 1). ``-inf`` entries stay at probability 0.

    Args:
        teacher_logits: ``[B,C,H,W]`` logits or log-probabilities (``-inf`` allowed, at least one
            finite entry per pixel).
        temperature: T > 0.

    Returns:
        ``[B,C,H,W]`` probabilities.
    """
    return torch.softmax(teacher_logits.float() / temperature, dim=1)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """``T² · mean over pixels of KL(softmax(z_t/T) ‖ softmax(z_s/T))`` (sum over classes).

    The T² factor (Hinton et al.) keeps the gradient's size independent of T: the gradient of the
    KL with respect to the student logits is ``(p_s − p_t)/T``, and for large T the difference
    itself shrinks like ``1/T``, so without T² a higher temperature would silently lower the
    effective learning rate.

    Args:
        student_logits: ``[B,C,H,W]`` (differentiable).
        teacher_logits: ``[B,C,H,W]`` logits / log-probabilities of the teacher (no gradient is
            taken through them), ``-inf`` allowed for classes the teacher rules out.
        temperature: T > 0.

    Returns:
        Scalar: the KL summed over classes, averaged over the ``B·H·W`` pixels, times T².
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    q = tempered_probs(teacher_logits.detach(), temperature)
    log_p = torch.log_softmax(student_logits.float() / temperature, dim=1)
    # xlogy(0, 0) = 0: classes the teacher rules out (q = 0) add nothing instead of 0·(−inf) = nan
    kl = (torch.xlogy(q, q) - q * log_p).sum(dim=1)  # [B,H,W]
    return kl.mean() * temperature ** 2


def ignored_consistency_loss(student_logits: Tensor, teacher_probs: Tensor, labels: Tensor) -> Tensor:
    """HIAST's consistency on the non-pseudo-label region (soft CE teacher → student).

    ``Σ_{ign,c} (−q_c log p_c) / #nonzero terms`` (``losses.py:compute_loss_by_selected_pixel``:
    the denominator counts the non-zero entries, ≈ ``C·N_ign``).

    Args:
        student_logits: ``[B,C,H,W]`` (strong view).
        teacher_probs: ``[B,C,H,W]`` EMA teacher softmax (weak view), no gradient.
        labels: pseudo labels ``[B,H,W]``; the loss covers their 255 pixels.
    """
    mask = (labels == IGNORE).unsqueeze(1)
    terms = -F.log_softmax(student_logits, dim=1) * teacher_probs * mask
    nonzero = (terms != 0).sum()
    return terms.sum() / nonzero if nonzero > 0 else empty_loss(student_logits)
