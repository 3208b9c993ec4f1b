"""Knowledge distillation from a black-box source's predictions (Hinton et al. 2015, per pixel).

Pure functions on logits ``[B,C,H,W]``. The teacher side may be logits, log-probabilities, or
``log(one-hot)`` with ``-inf`` for impossible classes (a source that returns only a label map):
every per-pixel shift of the teacher's logits gives the same tempered distribution, so one
function serves APIs that return logits, probabilities (pass their log) or masks.
"""
from __future__ import annotations

import torch
from torch import Tensor


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

