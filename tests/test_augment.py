"""Photometric augmentation: known answers on small tensors, determinism under the generator."""
from __future__ import annotations

import math

import pytest
import torch

from sfda_deploy.adapt import augment as A


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_color_jitter_neutral_strength_is_identity():
    x = torch.tensor([[[[10.0, 200.0]], [[50.0, 100.0]], [[90.0, 0.0]]]])  # [1,3,1,2]
    # strength 0: every factor is 1 and the hue shift 0 → the image comes back (up to float error)
    assert torch.allclose(A.color_jitter(x, _gen(), strength=0.0), x, atol=1e-3)


def test_gray_is_itu601_luma():
    # (100, 50, 0) → .299·100 + .587·50 + .114·0 = 29.9 + 29.35 = 59.25
    x = torch.tensor([100.0, 50.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(A._gray(x), torch.tensor(59.25).view(1, 1, 1, 1))


def test_gaussian_noise_is_sigma_times_the_generator_draw_clipped():
    x = torch.tensor([0.0, 128.0, 255.0]).view(1, 3, 1, 1)
    draw = torch.randn(x.shape, generator=_gen(3))
    expected = (x + 4.0 * draw).clamp(0, 255)
    assert torch.equal(A.gaussian_noise(x, _gen(3), 4.0), expected)
    assert torch.equal(A.gaussian_noise(x, _gen(3), 0.0), x)
    assert float(A.gaussian_noise(x, _gen(3), 1e4).max()) <= 255 and float(A.gaussian_noise(x, _gen(3), 1e4).min()) >= 0


def test_photometric_augment_repeats_under_the_same_generator_state():
    x = torch.rand(2, 3, 16, 16, generator=_gen(1)) * 255
    a, b = A.photometric_augment(x, _gen(7)), A.photometric_augment(x, _gen(7))
    assert torch.equal(a, b) and a.shape == x.shape
    assert not torch.equal(a, x)  # seed 7 draws at least the jitter (p = .8): the image changes
    assert float(a.min()) >= 0 and float(a.max()) <= 255


def test_blur_kernel_size_is_dacs_ceil_tenth_rounded_down_to_odd():
    # ceil(0.1 n), then an even length loses one: 640 -> 64 -> 63, 512 -> 52 -> 51, 1024 -> 103, 128 -> 13
    assert [A.blur_kernel_size(n) for n in (640, 512, 1024, 128, 30, 10)] == [63, 51, 103, 13, 3, 1]


def test_gaussian_blur_kernel_per_axis_by_hand():
    # a single bright pixel in a 20 x 40 image spreads over 1 row x 3 columns: ky = ceil(2) -> 1,
    # kx = ceil(4) -> 3; the row weights are exp(-r^2 / (2 sigma^2)) for r = -1, 0, 1, normalised
    x = torch.zeros(1, 1, 20, 40)
    x[0, 0, 10, 20] = 1.0
    y = A.gaussian_blur(x, 1.0)
    e = math.exp(-0.5)
    assert torch.count_nonzero(y) == 3 and torch.count_nonzero(y[0, 0, 10]) == 3
    assert y[0, 0, 10, 19:22].tolist() == pytest.approx([e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)])
