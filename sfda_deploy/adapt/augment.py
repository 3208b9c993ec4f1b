"""Batch-level photometric augmentation (DACS/ATP's strong view) on float 0-255 RGB batches.

One random draw per batch (as DACS's ``strong_transform``): colour jitter (brightness, contrast,
saturation, hue, each 0.2) with probability 0.8, then Gaussian blur with probability 0.5,
σ ~ U(0.15, 1.15) and a kernel of ceil(0.1·size) rounded down to odd, per axis. All draws come from
the ``generator`` argument, so a resumed run repeats them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g, device=g.device).item()


def _gray(x: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` RGB → ``[B,1,H,W]`` luma (ITU-R 601, as kornia)."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _shift_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate hue by ``shift`` (fraction of a turn) via the YIQ rotation; x in [0,1] ``[B,3,H,W]``."""
    theta = 2 * math.pi * shift
    c, s = math.cos(theta), math.sin(theta)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          dtype=x.dtype, device=x.device)
    rot = torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=x.dtype, device=x.device)
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,bjhw->bihw", m, x)


def color_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.2) -> torch.Tensor:
    """Brightness, contrast, saturation, hue factors drawn once; x float 0-255 ``[B,3,H,W]``."""
    y = x / 255.0
    b = _uniform(g, 1 - strength, 1 + strength)
    c = _uniform(g, 1 - strength, 1 + strength)
    s = _uniform(g, 1 - strength, 1 + strength)
    h = _uniform(g, -strength, strength)
    y = (y * b).clamp(0, 1)
    mean = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = ((y - mean) * c + mean).clamp(0, 1)
    gray = _gray(y)
    y = ((y - gray) * s + gray).clamp(0, 1)
    y = _shift_hue(y, h).clamp(0, 1)
    return y * 255.0


def blur_kernel_size(n: int) -> int:
    """DACS's kernel length along an axis of ``n`` pixels: ceil(0.1·n), rounded down to odd."""
    c = math.ceil(0.1 * n)
    return c if c % 2 else c - 1


def _gaussian_1d(k: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    r = torch.arange(k, dtype=like.dtype, device=like.device) - (k - 1) / 2
    w = torch.exp(-(r ** 2) / (2 * sigma ** 2))
    return w / w.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, reflect padding, its kernel ``blur_kernel_size`` of each axis on its own
    (DACS ``transformsgpu.gaussian_blur``: about 0.1·H by 0.1·W)."""
    c = x.shape[1]
    ky, kx = (max(1, blur_kernel_size(n)) for n in x.shape[-2:])
    y = F.pad(x, (kx // 2, kx // 2, 0, 0), mode="reflect") if kx > 1 else x
    y = F.conv2d(y, _gaussian_1d(kx, sigma, x).view(1, 1, 1, kx).repeat(c, 1, 1, 1), groups=c)
    y = F.pad(y, (0, 0, ky // 2, ky // 2), mode="reflect") if ky > 1 else y
    return F.conv2d(y, _gaussian_1d(ky, sigma, x).view(1, 1, ky, 1).repeat(c, 1, 1, 1), groups=c)


def strong_augment(x: torch.Tensor, g: torch.Generator, jitter_p: float = 0.8, blur_p: float = 0.5,
                   strength: float = 0.2) -> torch.Tensor:
    """ATP/DACS strong view of a batch. Args: x float 0-255 RGB ``[B,3,H,W]``. Returns same shape."""
    x = x.float()
    if torch.rand((), generator=g, device=g.device).item() < jitter_p:
        x = color_jitter(x, g, strength)
    if torch.rand((), generator=g, device=g.device).item() < blur_p:
        x = gaussian_blur(x, _uniform(g, 0.15, 1.15))
    return x


def gaussian_noise(x: torch.Tensor, g: torch.Generator, sigma: float) -> torch.Tensor:
    """``x`` (float 0-255) plus i.i.d. N(0, sigma²) per pixel and channel, clipped to [0, 255]."""
    noise = torch.randn(x.shape, generator=g, device=g.device).to(x.device)
    return (x + sigma * noise).clamp(0, 255)


def photometric_augment(x: torch.Tensor, g: torch.Generator, noise_p: float = 0.5,
                        max_sigma: float = 8.0) -> torch.Tensor:
    """Source training's appearance augmentation: the strong view (jitter, blur) plus sensor noise.

    Args: x float 0-255 RGB ``[B,3,H,W]``. Returns the same shape.
    """
    x = strong_augment(x, g)
    if torch.rand((), generator=g, device=g.device).item() < noise_p:
        x = gaussian_noise(x, g, _uniform(g, 0.0, max_sigma))
    return x
