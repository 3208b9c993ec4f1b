"""AMP dtype choice from a GPU's capability (no GPU needed: the decision is a pure function)."""
from __future__ import annotations

import torch

from sfda_deploy.adapt import amp


def test_bf16_only_where_the_gpu_computes_it_natively():
    # Ampere and later with native bf16: bf16 autocast, no scaler
    assert amp.amp_dtype((8, 0), True) is torch.bfloat16  # A100
    assert amp.amp_dtype((8, 7), True) is torch.bfloat16  # Jetson Orin
    assert amp.amp_dtype((9, 0), True) is torch.bfloat16  # H100
    # T4 (7.5), V100 (7.0), Jetson Xavier (7.2): torch's default is_bf16_supported() says True there
    # (emulation); the native check and the capability both say fp16
    for cc in ((7, 5), (7, 0), (7, 2)):
        assert amp.amp_dtype(cc, False) is torch.float16, cc
        assert amp.amp_dtype(cc, True) is torch.float16, cc  # the capability alone already rules bf16 out
    assert amp.amp_dtype((8, 6), False) is torch.float16  # a driver/build without native bf16


def test_no_amp_and_no_scaler_on_cpu():
    assert amp.device_amp_dtype("cpu") is None
    assert not amp.make_scaler("cpu", True).is_enabled()
    with amp.autocast("cpu", True):
        assert not torch.is_autocast_enabled("cuda")
