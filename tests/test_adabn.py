"""AdaBN: BatchNorm re-estimation by hand, ``adapt --method adabn`` through the CLI, bad input."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from sfda_deploy.adapt.batchnorm import batchnorm_layers, reestimate_batchnorm
from sfda_deploy.checkpoint import load_model, save_checkpoint
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import MODELS, SegmentationModel
from tests.conftest import assert_user_error
from tests.test_peer_methods import tiny_source
from tests.tiny_data import TinyDataset, patch_datasets


def _one_bn(dropout: float = 0.0) -> nn.Module:
    bn = nn.BatchNorm2d(1, momentum=0.3)
    bn.running_mean.fill_(100.0)  # stale statistics: must not leak into the result
    bn.running_var.fill_(100.0)
    return nn.Sequential(nn.Dropout(dropout), bn).eval()


def _batches():
    # batch 1: values 1, 3 → mean 2, unbiased var ((1−2)² + (3−2)²)/1 = 2
    # batch 2: values 2, 4, 6, 8 → mean 5, unbiased var (9 + 1 + 1 + 9)/3 = 20/3
    return [torch.tensor([1.0, 3.0]).view(1, 1, 1, 2), torch.tensor([2.0, 4.0, 6.0, 8.0]).view(1, 1, 2, 2)]


def test_reestimate_one_bn_layer_by_hand():
    model = _one_bn()
    weight = model[1].weight.detach().clone()
    assert reestimate_batchnorm(model, _batches()) == 2
    bn = model[1]
    # cumulative (equal-weight) average: mean (2 + 5)/2 = 3.5, var (2 + 20/3)/2 = 13/3
    assert float(bn.running_mean) == pytest.approx(3.5)
    assert float(bn.running_var) == pytest.approx(13 / 3)
    assert int(bn.num_batches_tracked) == 2
    assert torch.equal(bn.weight, weight)  # statistics only, no parameter changes
    assert bn.momentum == 0.3 and not bn.training and not model.training  # momentum and modes restored


def test_reestimate_ignores_order_and_keeps_dropout_off():
    # dropout p = .9 in front of the BN: were it on, the statistics would be of randomly zeroed inputs
    forward, backward = _one_bn(dropout=0.9), _one_bn(dropout=0.9)
    forward.train()  # a model handed over in train mode is given back in train mode
    reestimate_batchnorm(forward, _batches())
    reestimate_batchnorm(backward, _batches()[::-1])
    for model in (forward, backward):
        assert float(model[1].running_mean) == pytest.approx(3.5)
        assert float(model[1].running_var) == pytest.approx(13 / 3)
    assert forward.training and forward[0].training and not backward.training


def test_reestimate_without_batches_or_batchnorm():
    model = _one_bn()
    with pytest.raises(ValueError, match="no batches"):
        reestimate_batchnorm(model, [])
    assert float(model[1].running_mean) == 100.0 and model[1].momentum == 0.3  # left untouched
    with pytest.raises(ValueError, match="no BatchNorm"):
        reestimate_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1)), _batches())
    # layers without running statistics are not re-estimated (they always use the batch's)
    assert batchnorm_layers(nn.Sequential(nn.BatchNorm2d(1, track_running_stats=False))) == []


def _adapt(tmp_path, source, *extra):
    return ["adapt", "--target", "cityscapes", "--data-root", tmp_path, "--source", source, "--method", "adabn",
            "--workers", 0, *extra]


def test_adabn_cli_writes_the_usual_run(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, n=4, size=(40, 48), style=0.3)
    source = tiny_source(tmp_path)
    r = invoke(_adapt(tmp_path, source))
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "adapt" / "adabn"
    for f in ("model.safetensors", "metrics.json", "config.yaml", "log.txt", "iou_before_after.png"):
        assert (run / f).is_file(), f
    metrics = json.loads((run / "metrics.json").read_text())
    assert "miou" in metrics["before"] and "miou" in metrics["BN"]["eval"] and metrics["BN"]["iters"] == 0
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = ModelMeta.from_json(f.metadata()["sfda_deploy"])
    assert meta.provenance[-1]["method"] == "adabn" and meta.provenance[-1]["stages"] == ["BN"]
    # the shipped statistics are those of the whole train images (TinyDataset seed 0), one per forward
    expected, meta0 = load_model(source, torch.device("cpu"))
    train = TinyDataset(n=4, size=(40, 48), seed=0, style=0.3)
    reestimate_batchnorm(expected, (meta0.normalize(train[i]["image"].unsqueeze(0)) for i in range(4)))
    got, src = load_file(str(run / "model.safetensors")), load_file(str(source))
    for name, value in expected.state_dict().items():
        assert torch.allclose(got[name].float(), value.float(), atol=1e-5), name
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(got[name], src[name]), name  # weights untouched
    assert not torch.equal(got["backbone.0.1.running_mean"], src["backbone.0.1.running_mean"])


def test_adabn_refuses_a_budget(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, n=4, size=(40, 48))
    r = invoke(_adapt(tmp_path, tiny_source(tmp_path), "--iters", 100, "--crop", 32, 32))
    assert_user_error(r, "--method adabn trains nothing", "drop --iters, --crop")
    assert not (tmp_path / "runs" / "adapt").exists()


class _NoBN(SegmentationModel):
    def __init__(self, num_classes=19, align_corners=False):
        super().__init__(num_classes, align_corners)
        self.feature_channels = 4
        self.body = nn.Conv2d(3, 4, 3, stride=8, padding=1)
        self.classifier = nn.Conv2d(4, num_classes, 1)

    def features(self, x):
        return self.body(x)

    def head(self, features):
        return self.classifier(features)


def test_adabn_on_a_model_without_batchnorm(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, n=4, size=(40, 48))
    monkeypatch.setitem(MODELS, "nobn", _NoBN)
    source = save_checkpoint(tmp_path / "nobn.safetensors", _NoBN(), ModelMeta(arch="nobn", input_size=(32, 32)))
    assert_user_error(invoke(_adapt(tmp_path, source)), "has no BatchNorm layer", "--method atp")
    assert not (tmp_path / "runs" / "adapt").exists()


def test_adabn_budget_flags_go_to_stage_p_under_propagate():
    from sfda_deploy.adapt.methods import get_method
    from sfda_deploy.commands.adapt_recipe import method_config
    from sfda_deploy.config import AdaptConfig
    from sfda_deploy.errors import SfdaError

    common = {"iters": 100, "batch": None, "crop": None, "lr": 1e-4}
    method = get_method("adabn")
    with pytest.raises(SfdaError, match="drop --iters, --lr"):
        method_config(AdaptConfig(method="adabn"), method, {}, common)
    # with --propagate the flags are stage P's (recipe.with_propagation); AdaBN itself keeps no budget
    assert method_config(AdaptConfig(method="adabn", propagate=True), method, {}, common).iters == 0
    with pytest.raises(SfdaError, match="bad option for method adabn"):
        method_config(AdaptConfig(method="adabn"), method, {"iters": 5}, {})
