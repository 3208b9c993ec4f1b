"""Photometric augmentation: known answers on small tensors, determinism under the generator."""
from __future__ import annotations

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
