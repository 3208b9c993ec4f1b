"""``student_bn``: the student's BatchNorm layers while it trains (train / frozen / adabn), in the loop."""
from __future__ import annotations

import pytest
import torch

from sfda_deploy.adapt import loop as L
from sfda_deploy.adapt import loop_state as LS
from sfda_deploy.adapt.batchnorm import batchnorm_layers, train_mode
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.adapt.methods.adabn import adabn_copy
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from tests.tiny_data import TinyDataset


def _stats(model):
    return [(m.running_mean.clone(), m.running_var.clone()) for m in batchnorm_layers(model)]


def _same(a, b):
    return all(torch.equal(x, y) and torch.equal(u, v) for (x, u), (y, v) in zip(a, b))


def test_train_mode_keeps_batchnorm_in_eval_unless_train():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Dropout2d(0.5))
    train_mode(model.eval(), "frozen")
    assert model.training and model[2].training and not model[1].training
    train_mode(model, "train")
    assert model[1].training and model[2].training


def _run(tmp_path, student_bn: str, target_style: float = 0.4):
    torch.manual_seed(0)
    method = get_method("atp")
    cfg = method.make_config({"checkpoint_every": 0, "warmup_iters": 0, "student_bn": student_bn}, iters=3, batch=2,
                             crop=(32, 32), lr=1e-2)
    model = build_model("tiny", num_classes=19)
    meta = ModelMeta(arch="tiny", input_size=(48, 64))
    data = TinyDataset(n=4, style=target_style)
    source = {k: v.clone() for k, v in model.state_dict().items()}
    run_dir = tmp_path / student_bn
    run_dir.mkdir()
    L.run(LS.LoopJob(method=method, cfg=cfg, stages=method.stages[:1], student=model, meta=meta, train_set=data,
                     run_dir=run_dir, device=torch.device("cpu"), seed=0, progress=False))
    start = build_model("tiny", num_classes=19)
    start.load_state_dict(source)
    return model, start, adabn_copy(start, data, meta, torch.device("cpu"), False)


@pytest.mark.parametrize("student_bn", ["train", "frozen", "adabn"])
def test_the_statistics_a_stage_trains_with(tmp_path, student_bn):
    trained, source, adabn = _run(tmp_path, student_bn)
    assert not torch.equal(trained.classifier.weight, source.classifier.weight)  # it trained
    kept = _stats(trained)
    # train: the running statistics follow the crops; frozen: the source's stay; adabn: AdaBN's, exactly
    assert _same(kept, _stats(source)) == (student_bn == "frozen")
    assert _same(kept, _stats(adabn)) == (student_bn == "adabn")
    bn = batchnorm_layers(trained)[0]
    assert not torch.equal(bn.weight, batchnorm_layers(source)[0].weight)  # γ trains in every mode


def test_a_bad_student_bn():
    with pytest.raises(SfdaError, match="unknown --set student_bn 'adbn'.*did you mean 'adabn'"):
        get_method("atp").make_config({"student_bn": "adbn"})
