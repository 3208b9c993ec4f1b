"""Issue 27: the saved-activation count behind scripts/transformer_memory.py's estimate."""
from __future__ import annotations

import pytest
import torch

from scripts.transformer_memory import estimate, saved_activation_bytes
from sfda_deploy.models import build_model


@pytest.mark.parametrize("fake", [True, False])
def test_saved_bytes_of_a_conv_and_cross_entropy_by_hand(fake):
    # a 1x1 conv saves its input (fp32); log_softmax its output; nll_loss the labels (int64) and the
    # total weight (one fp32); the conv's weight is a parameter, counted apart
    model = torch.nn.Conv2d(3, 5, 1)
    b, h, w = 2, 4, 6
    total, largest = saved_activation_bytes(model, b, (h, w), 5, dtype=None, fake=fake)
    assert total == 4 * b * 3 * h * w + 4 * b * 5 * h * w + 8 * b * h * w + 4
    assert largest == 4 * b * 5 * h * w


def test_the_fake_trace_counts_what_a_real_one_saves():
    torch.manual_seed(0)
    model = build_model("segformer_b0", num_classes=19).train()
    real = saved_activation_bytes(model, 2, (64, 64), 19, dtype=None, fake=False)
    assert saved_activation_bytes(model, 2, (64, 64), 19, dtype=None, fake=True) == real


def test_estimate_parts_of_a_small_model():
    parts = estimate("segformer_b0", (64, 64), 1)
    weights = parts["_params_m"] * 4e6 / 1e9
    assert parts["gradients (fp32)"] == pytest.approx(weights)
    assert parts["AdamW moments (2 x fp32)"] == pytest.approx(2 * weights)
    assert parts["saved activations (bf16 autocast)"] > 0
