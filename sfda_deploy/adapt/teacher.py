"""EMA teacher: a frozen copy of the student whose parameters follow it (mean teacher).

α_t = min(1 − 1/(t+1), α_max) (DACS/ATP/LDBE: ``ramp``), so the teacher tracks the student closely at
first; or α_max from the first update on (HIAST, CPSL), so the teacher stays anchored on the source model.
Only parameters are averaged; buffers are either kept as initialised (``keep``, the DACS/ATP code)
or copied from the student (``copy``).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_alpha(t: int, alpha_max: float, ramp: bool = True) -> float:
    """The EMA weight of the old teacher at update ``t`` (0-based): ramped up to ``alpha_max``, or constant."""
    return min(1.0 - 1.0 / (t + 1), alpha_max) if ramp else alpha_max


def make_teacher(student: nn.Module, bn: str = "batch") -> nn.Module:
    """A gradient-free copy of ``student``.

    Args:
        bn: ``batch``: train mode (BN uses batch statistics, as DACS/ATP, whose EMA model is never put
            in eval mode) with dropout off; ``eval``: eval mode.
    """
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    set_teacher_mode(teacher, bn)
    return teacher


def set_teacher_mode(teacher: nn.Module, bn: str) -> None:
    teacher.train(bn == "batch")
    for m in teacher.modules():  # the teacher never drops units (ATP turns dropout/DropPath off)
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, t: int, alpha_max: float, buffers: str = "keep",
               ramp: bool = True) -> None:
    """teacher ← α_t·teacher + (1−α_t)·student for parameters (α_t per ``ema_alpha``); buffers per ``buffers``."""
    alpha = ema_alpha(t, alpha_max, ramp)
    t_params = list(teacher.parameters())
    s_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, alpha)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - alpha)
    if buffers == "copy":
        for tb, sb in zip(teacher.buffers(), student.buffers()):
            tb.copy_(sb)
