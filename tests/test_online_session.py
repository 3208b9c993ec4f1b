"""The online update steps on the tiny model: what each rule trains, CoTTA's teacher and restore, and the
safety reset (a stream that forces the model away from the anchor is reset, and predicts as the anchor)."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from sfda_deploy.adapt.batchnorm import norm_parameter_names
from sfda_deploy.adapt.online import get_online_method, start, update
from sfda_deploy.errors import SfdaError
from sfda_deploy.models import build_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("tiny", num_classes=19).eval()


def _frames(n: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 64, generator=torch.Generator().manual_seed(seed))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tent_trains_only_batchnorm_affine_and_statistics():
    model = _model()
    before = _snapshot(model)
    state = start(model, "tent")
    update(state, _frames(), drift=None)
    after = model.state_dict()
    norm = set(norm_parameter_names(model))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert norm <= changed  # every BN weight/bias moved
    assert all(k in norm or "running" in k or "num_batches" in k for k in changed)  # and no conv weight
    assert model.training is False  # back to eval for inference


def test_anchored_pull_moves_a_displaced_weight_back_by_lr():
    model = _model()
    state = start(model, "anchored", {"max_entropy": 0.0, "lr": 1e-3})  # no reliable pixel: only the pull
    with torch.no_grad():
        state.params[0][0] += 1.0  # displaced from the anchor by +1
    before = state.params[0].detach().clone()
    update(state, _frames(), drift=None)
    # Adam's first step moves each parameter by lr against the sign of its gradient (0 where the gradient is 0).
    assert state.params[0][0].item() == pytest.approx(before[0].item() - 1e-3, abs=1e-6)
    assert torch.equal(state.params[0][1:], before[1:])


def test_cotta_teacher_is_the_ema_of_the_student_and_restore_goes_to_the_source():
    model = _model()
    state = start(model, "cotta", {"restore_p": 0.0, "ema": 0.9, "lr": 1e-2, "scales": (1.0,)})
    teacher_before = [p.detach().clone() for p in model.parameters()]
    update(state, _frames(), drift=None)
    for t_old, t_new, s in zip(teacher_before, model.parameters(), state.student.parameters()):
        assert torch.allclose(t_new, 0.9 * t_old + 0.1 * s.detach(), atol=1e-6)
    assert any(not torch.equal(s, a) for s, a in zip(state.student.parameters(), state.anchor.parameters()))
    restored = start(_model(), "cotta", {"restore_p": 1.0, "lr": 1e-2, "scales": (1.0,)})
    update(restored, _frames(), drift=None)
    assert all(torch.equal(s, a) for s, a in zip(restored.student.parameters(), restored.anchor.parameters()))


def test_a_stream_that_forces_a_collapse_is_reset_to_the_anchor():
    probe = _frames(2, seed=9)
    forced = start(_model(), "tent", {"lr": 0.5})  # a learning rate that wrecks the model in one step
    results = [update(forced, _frames(seed=s)) for s in range(3)]
    assert forced.resets == 3 and all(r.reset for r in results)
    assert results[0].reset.startswith("disagreement")
    with torch.no_grad():  # after the reset the model predicts exactly as the anchor
        assert torch.equal(forced.predictor(probe), forced.anchor(probe))
    unchecked = start(_model(), "tent", {"lr": 0.5})
    update(unchecked, _frames(seed=0), drift=None)
    with torch.no_grad():  # without the detector it stays wrecked
        assert (unchecked.predictor(probe).argmax(1) != unchecked.anchor(probe).argmax(1)).float().mean() > 0.6
    assert unchecked.resets == 0


class _NoNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 19, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("method", ["tent", "anchored"])
def test_batchnorm_methods_refuse_a_model_without_batchnorm(method):
    with pytest.raises(SfdaError, match="has none: use --adapt cotta"):
        start(_NoNorm(), method)
    start(_NoNorm(), "cotta")  # CoTTA adapts every weight: fine


def test_unknown_method_and_option_are_named():
    with pytest.raises(SfdaError, match="unknown --adapt method 'tnet'.*tent"):
        start(_model(), "tnet")
    with pytest.raises(SfdaError, match="unknown option 'lrr'.*lr"):
        start(_model(), "tent", {"lrr": 1.0})


def test_online_options_are_typed_and_range_checked():
    tent = get_online_method("tent")
    assert tent.make_config({"lr": "1e-4"}).lr == 1e-4  # text from YAML → the float field's number
    assert get_online_method("cotta").make_config({"scales": [0.5, 1]}).scales == (0.5, 1.0)
    for options, message in (({"bn_momentum": 5}, "--adapt-set bn_momentum 5.0 is not allowed: use a number from 0 to 1"),
                             ({"bn_momentum": "abc"}, "--adapt-set bn_momentum 'abc' is not allowed: use a number"),
                             ({"lr": 0}, "--adapt-set lr 0.0 is not allowed: use a number > 0"),
                             ({"max_entropy": 1.5}, "--adapt-set max_entropy 1.5")):
        with pytest.raises(SfdaError, match=re.escape(message)):
            get_online_method("anchored").make_config(options)


def test_bnstats_moves_only_the_running_statistics():
    model = _model()
    before = _snapshot(model)
    update(start(model, "bnstats"), _frames(), drift=None)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("running" in k or "num_batches" in k for k in changed)


def test_online_methods_are_registered_once_and_listed_from_the_registry(monkeypatch, invoke):
    from sfda_deploy.adapt.online import ONLINE_METHODS, online_method_names, register_online
    from sfda_deploy.adapt.online.methods import OnlineMethod, TentConfig, bnstats_step

    assert online_method_names() == "tent|cotta|bnstats|anchored"
    monkeypatch.setattr("sfda_deploy.adapt.online.methods.ONLINE_METHODS", dict(ONLINE_METHODS))
    register_online(OnlineMethod("stats2", TentConfig, bnstats_step, description="a test copy of bnstats"))
    assert get_online_method("stats2").make_config({"bn_momentum": "0.5"}).bn_momentum == 0.5
    assert online_method_names().endswith("|stats2")
    # segment's error line lists what is registered, bnstats included
    result = invoke(["segment", "nowhere.mp4", "--adapt-set", "lr=1"])
    assert "add --adapt tent|cotta|bnstats|anchored|stats2" in result.output + str(getattr(result, "stderr", ""))
