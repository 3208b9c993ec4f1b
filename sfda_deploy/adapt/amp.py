"""Mixed precision of the training loop: which autocast dtype a GPU gets, and the (scaled) update.

bf16 autocast only where the GPU computes bf16 natively (compute capability 8.0 and later: A100,
RTX 30xx, H100, Jetson Orin). ``torch.cuda.is_bf16_supported()`` with its default also counts
emulation, which would send T4, V100, Turing and Jetson Xavier into bf16 convolutions cuDNN cannot run
there (an error, or emulated and very slow); those GPUs get fp16 with a ``GradScaler``.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch

from sfda_deploy.adapt import distributed as D

BF16_MIN_CAPABILITY = (8, 0)  # Ampere: first architecture with bf16 tensor cores


def amp_dtype(capability: tuple[int, int], bf16_native: bool) -> torch.dtype:
    """The autocast dtype for a GPU of ``capability`` (major, minor).

    Args:
        capability: CUDA compute capability, e.g. ``(7, 5)`` for a T4.
        bf16_native: ``torch.cuda.is_bf16_supported(including_emulation=False)`` on that GPU.
    Returns:
        ``torch.bfloat16`` when both say the GPU computes bf16 natively, else ``torch.float16``.
    """
    return torch.bfloat16 if bf16_native and tuple(capability) >= BF16_MIN_CAPABILITY else torch.float16


@functools.lru_cache(maxsize=None)
def _cuda_amp_dtype(index: int) -> torch.dtype:
    with torch.cuda.device(index):  # is_bf16_supported asks the CURRENT device: make it this one
        return amp_dtype(torch.cuda.get_device_capability(index),
                         torch.cuda.is_bf16_supported(including_emulation=False))


def device_amp_dtype(device) -> Optional[torch.dtype]:
    """The autocast dtype on ``device`` (``amp_dtype`` of its GPU); None on CPU (no AMP there)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return _cuda_amp_dtype(device.index if device.index is not None else torch.cuda.current_device())


def autocast(device, enabled: bool):
    """``torch.autocast`` with ``device_amp_dtype``; a no-op when disabled or on CPU."""
    dtype = device_amp_dtype(device) if enabled else None
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def make_scaler(device, enabled: bool) -> torch.amp.GradScaler:
    """A gradient scaler, active only for fp16 autocast (bf16 and fp32 need none)."""
    fp16 = enabled and device_amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=fp16)


def apply_gradients(total: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    params: list[torch.Tensor]) -> None:
    """Backward of ``total``, gradients averaged over processes, then the (scaled) optimiser step.

    The all-reduce comes BEFORE the scaler unscales and checks for inf/NaN: checked per rank first,
    one rank's overflow would be averaged into the others' gradients after they had decided to step
    (inf gradients, NaN weights). Reduced first, every rank sees the same gradients and skips or
    steps together.
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    D.average_gradients(params)
    scaler.step(optimizer)  # unscales the averaged gradients, skips the step if any is inf/NaN
    scaler.update()
