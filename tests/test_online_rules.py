"""Known answers of the online update rules' maths and of the drift detector (computed by hand)."""
from __future__ import annotations

import math

import pytest
import torch

from sfda_deploy.adapt.online.drift import DriftConfig, drift_reason, drift_scores, effective_classes
from sfda_deploy.adapt.online.rules import (
    anchor_penalty,
    cotta_targets,
    reliable_entropy_loss,
    restore,
    restore_mask,
    soft_cross_entropy,
    stochastic_restore_,
    tent_loss,
    view_averaged_probs,
)

LN3 = math.log(3.0)
# Two pixels, two classes: [0, 0] (p = ½, ½: entropy ln2, normalised 1) and [0, ln 3] (p = ¼, ¾).
H_QUARTER = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)  # 0.811278


def _two_pixels() -> torch.Tensor:
    return torch.tensor([[0.0, 0.0], [0.0, LN3]]).T.reshape(1, 2, 1, 2)  # [B=1, C=2, H=1, W=2]


def test_tent_loss_is_the_mean_normalised_entropy():
    assert tent_loss(_two_pixels()).item() == pytest.approx((1.0 + H_QUARTER) / 2, abs=1e-6)


def test_reliable_entropy_keeps_only_pixels_below_the_bound():
    assert reliable_entropy_loss(_two_pixels(), 0.9).item() == pytest.approx(H_QUARTER, abs=1e-6)
    logits = _two_pixels().requires_grad_()
    none = reliable_entropy_loss(logits, 0.5)  # no reliable pixel: a zero that still has a graph
    assert none.item() == 0.0 and none.requires_grad
    none.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_anchor_penalty_is_the_squared_distance():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    anchor = [torch.tensor([0.0, 0.0]), torch.tensor([1.0])]
    assert anchor_penalty(params, anchor).item() == pytest.approx(1 + 4 + 4)


def test_soft_cross_entropy_per_pixel():
    logits = torch.zeros(1, 2, 1, 1)
    target = torch.tensor([0.25, 0.75]).view(1, 2, 1, 1)
    assert soft_cross_entropy(logits, target).item() == pytest.approx(math.log(2), abs=1e-6)
    # A pixel of logits [0, ln 3] (p = ¼, ¾) against the one-hot target [0, 1]: −ln ¾.
    logits = torch.tensor([0.0, LN3]).view(1, 2, 1, 1)
    target = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    assert soft_cross_entropy(logits, target).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_cotta_targets_average_the_views_only_where_the_anchor_is_unsure():
    teacher = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(2, 2, 1, 2)
    averaged = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1).expand(2, 2, 1, 2)
    # Image 0: anchor max-probs 0.9 and 0.9 (mean 0.9 < 0.92: unsure); image 1: 0.95 and 0.95 (sure).
    anchor = torch.tensor([[[[0.9, 0.9]], [[0.1, 0.1]]], [[[0.95, 0.95]], [[0.05, 0.05]]]])
    out = cotta_targets(teacher, averaged, anchor, 0.92)
    assert torch.equal(out[0], averaged[0]) and torch.equal(out[1], teacher[1])


def test_view_average_maps_flipped_and_rescaled_views_back():
    ramp = torch.linspace(-1, 1, 8).view(1, 1, 1, 8).expand(1, 2, 4, 8).clone()
    ramp[:, 1] = 0.0  # logits: class 0 = a left-to-right ramp, class 1 = 0
    predict = lambda x: x[:, :2]  # noqa: E731 - a "network" whose logits are its input
    # Flipping is undone exactly: the flipped view's logits, flipped back, are the ramp again.
    assert torch.allclose(view_averaged_probs(predict, ramp, [1.0], flip=True), ramp.softmax(1), atol=1e-6)
    flat = torch.full((1, 2, 4, 8), 0.3)
    flat[:, 1] = -0.3  # a constant image: every scale and flip predicts the same
    assert torch.allclose(view_averaged_probs(predict, flat, [0.5, 1.0, 1.5], flip=True), flat.softmax(1), atol=1e-6)


def test_restore_replaces_exactly_the_masked_elements():
    param, source = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])
    assert torch.equal(restore(param, source, torch.tensor([True, False, True])), torch.tensor([10.0, 2.0, 30.0]))
    g = torch.Generator().manual_seed(0)
    assert not restore_mask(torch.Size([100]), 0.0, g).any() and restore_mask(torch.Size([100]), 1.0, g).all()
    share = restore_mask(torch.Size([20000]), 0.25, g).float().mean().item()
    assert share == pytest.approx(0.25, abs=0.02)
    params = [param.clone()]
    stochastic_restore_(params, [source], 1.0, g)
    assert torch.equal(params[0], source)


def _logits(labels: list[int], c: int = 2, scale: float = 30.0) -> torch.Tensor:
    """Confident logits ``[1,C,1,N]`` predicting ``labels``."""
    return torch.nn.functional.one_hot(torch.tensor(labels), c).T.float().view(1, c, 1, -1) * scale


def test_effective_classes():
    assert effective_classes(torch.tensor([0, 0, 1, 1]), 3).item() == pytest.approx(2.0)
    assert effective_classes(torch.tensor([2, 2, 2, 2]), 3).item() == pytest.approx(1.0)


def test_drift_scores_of_a_collapse_onto_one_class():
    s = drift_scores(_logits([0, 0, 0, 0]), _logits([0, 0, 1, 1]))
    assert s["disagreement"] == pytest.approx(0.5)
    assert s["class_ratio"] == pytest.approx(0.5)          # 1 effective class vs 2
    assert s["marginal_shift"] == pytest.approx(0.5, abs=1e-6)  # [1, 0] vs [½, ½]
    assert s["entropy_rise"] == pytest.approx(0.0, abs=1e-6)
    assert drift_reason(s, DriftConfig()) == "marginal shift 0.50 > 0.35"
    assert drift_reason(s, DriftConfig(max_marginal_shift=0.6, min_class_ratio=0.6)) == "class ratio 0.50 < 0.60"
    assert drift_reason(s, DriftConfig(max_marginal_shift=0.6, max_disagreement=0.4, min_class_ratio=0.1)) == \
        "disagreement 0.50 > 0.40"
    assert drift_reason(drift_scores(_logits([0, 1]), _logits([0, 1])), DriftConfig()) is None


def test_rising_entropy_is_caught():
    unsure = torch.zeros(1, 2, 1, 2)  # normalised entropy 1 where the anchor is sure (≈ 0)
    s = drift_scores(unsure, _logits([0, 1]))
    assert s["entropy_rise"] == pytest.approx(1.0, abs=1e-6)
    assert drift_reason(s, DriftConfig()) == "entropy rise 1.00 > 0.20"
