"""The loop: supervised recipe end to end, exact resume, schedule, registry and config errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sfda_deploy.adapt import loop as L
from sfda_deploy.adapt import loop_state as LS
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.adapt.optim import build_optimizer, lr_factor, schedule_position, set_lr
from sfda_deploy.adapt.sampling import iteration_indices
from sfda_deploy.adapt.teacher import ema_alpha, ema_update
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.runs import new_run_dir
from tests.conftest import assert_user_error
from tests.tiny_data import TinyDataset, patch_datasets


def test_lr_factor_known_values():
    # poly power 1 over T=10, no warm-up: t=0 → 1, t=5 → 0.5
    assert lr_factor(0, 10, 0, 1e-6, 1.0) == 1.0
    assert lr_factor(5, 10, 0, 1e-6, 1.0) == 0.5
    # warm-up 4 iterations, ratio 0: t=2 → poly (1-2/10)=0.8 times (1-(1-2/4)) = 0.5 → 0.4
    assert lr_factor(2, 10, 4, 0.0, 1.0) == pytest.approx(0.4)
    assert lr_factor(4, 10, 4, 0.0, 1.0) == pytest.approx(0.6)


def test_head_parameters_and_extras_train_at_the_head_lr_multiple():
    # SGD without momentum or decay, every gradient 1: one step moves each weight by exactly -lr of its group
    model = build_model("tiny", num_classes=19)
    proj = torch.nn.Linear(4, 2)
    cfg = dataclasses.replace(get_method("atp").make_config({}), optimizer="sgd", lr=0.01, momentum=0.0,
                              weight_decay=0.0, nesterov=False)
    assert cfg.head_lr_mult == 10.0  # the spec's 10x head learning rate
    opt = build_optimizer(model, {"proj": proj}, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    proj_before = proj.weight.detach().clone()
    for p in [*model.parameters(), *proj.parameters()]:
        p.grad = torch.ones_like(p)
    opt.step()
    for n, p in model.named_parameters():
        step = 0.1 if n.startswith("classifier") else 0.01
        assert torch.allclose(before[n] - p.detach(), torch.full_like(p, step)), n
    assert torch.allclose(proj_before - proj.weight.detach(), torch.full_like(proj.weight, 0.1))  # extras: head lr
    set_lr(opt, 0.5)  # the schedule scales both groups from their own base
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 0.05])
    for arch, backbone, head in [("mobilenetv2_aspp", "encoder.0.0.weight", "aspp_head.branches.0.0.weight"),
                                 ("deeplabv2_r101", "conv1.weight", "layer5.conv2d_list.0.weight")]:
        m = build_model(arch, num_classes=19)
        names = {n for n, _ in m.named_parameters()}
        assert backbone in names and head in names, arch
        assert not m.is_head_parameter(backbone) and m.is_head_parameter(head), arch


def test_schedule_position_and_a_horizon_past_the_budget():
    # LDBE: 5000-step horizon restarted at each round; round 1 of a 991+991 budget begins at 991
    assert schedule_position(1000, 1982, 991, 5000) == (9, 5000)
    assert schedule_position(1000, 1982, 991, 0) == (1000, 1982)  # default: the stage's own budget
    # (1 - 990/5000)^0.9 = 0.802^0.9: the code's lr stays >= 0.82x... of the round's base at its last step
    assert lr_factor(990, 5000, 0, 1e-6, 0.9) == pytest.approx(0.802 ** 0.9)
    assert lr_factor(6000, 5000, 0, 1e-6, 0.9) == 0.0  # past the horizon: 0, not a complex power


def test_ema_alpha_and_update():
    assert ema_alpha(0, 0.999) == 0.0          # first update copies the student
    assert ema_alpha(3, 0.999) == 0.75         # 1 - 1/4
    assert ema_alpha(10_000, 0.999) == 0.999
    s, t = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    s.weight.data.fill_(2.0)
    t.weight.data.fill_(10.0)
    ema_update(t, s, 3, 0.999)                 # 0.75*10 + 0.25*2 = 8
    assert t.weight.item() == pytest.approx(8.0)


def test_iteration_indices_split_across_ranks():
    # two ranks together cover a permutation, disjointly, and the draw is a pure function of t
    a = [i for i, _ in iteration_indices(range(8), 0, 2, 0, "target", 0, 2)]
    b = [i for i, _ in iteration_indices(range(8), 0, 2, 0, "target", 1, 2)]
    c = [i for i, _ in iteration_indices(range(8), 1, 2, 0, "target", 0, 2)]
    d = [i for i, _ in iteration_indices(range(8), 1, 2, 0, "target", 1, 2)]
    assert sorted(a + b + c + d) == list(range(8))
    assert iteration_indices(range(8), 1, 2, 0, "target", 0, 2) == iteration_indices(range(8), 1, 2, 0, "target", 0, 2)


def _job(tmp_path, iters=6, checkpoint_every=2, name="r"):
    torch.manual_seed(0)
    method = get_method("supervised")
    cfg = method.make_config({"checkpoint_every": checkpoint_every}, iters=iters, batch=2, crop=(32, 32), lr=1e-2)
    model = build_model("tiny", num_classes=19)
    meta = ModelMeta(arch="tiny", input_size=(32, 32))
    return LS.LoopJob(method=method, cfg=cfg, stages=method.stages, student=model, meta=meta,
                     train_set=TinyDataset(n=5), run_dir=new_run_dir("adapt", name), device=torch.device("cpu"),
                     seed=3, progress=False)


def test_resume_reaches_the_same_weights(tmp_path, monkeypatch):
    full = _job(tmp_path, name="full")
    L.run(full)
    interrupted = _job(tmp_path, name="cut")
    real_step = interrupted.stages[0].step

    def dying_step(batch, student, teacher, state, cfg):
        if state.iteration == 4:
            raise KeyboardInterrupt  # a kill after the checkpoint at iteration 4
        return real_step(batch, student, teacher, state, cfg)

    cut_stage = dataclasses.replace(interrupted.stages[0], step=dying_step)
    interrupted.stages = (cut_stage,)
    with pytest.raises(KeyboardInterrupt):
        L.run(interrupted)
    assert not (interrupted.run_dir / "model.safetensors").exists()
    state = LS.load_resume(interrupted.run_dir)
    assert state["iteration"] == 4
    resumed = _job(tmp_path, name="other")
    resumed.run_dir = interrupted.run_dir
    torch.manual_seed(123)  # a different process state: everything must come from the checkpoint
    L.run(resumed, state)
    a = load_file(str(full.run_dir / "model.safetensors"))
    b = load_file(str(interrupted.run_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the training did move the weights
    assert not torch.equal(a["classifier.weight"], build_model("tiny", num_classes=19).classifier.weight)


def test_nonfinite_loss_stops_with_checkpoint_kept(tmp_path):
    job = _job(tmp_path, iters=6, checkpoint_every=2)
    real_step = job.stages[0].step

    def nan_step(batch, student, teacher, state, cfg):
        out = real_step(batch, student, teacher, state, cfg)
        if state.iteration == 3:
            out["ce"] = out["ce"] * float("nan")
        return out

    job.stages = (dataclasses.replace(job.stages[0], step=nan_step),)
    with pytest.raises(SfdaError, match="non-finite at iteration 3"):
        L.run(job)
    assert LS.load_resume(job.run_dir)["iteration"] == 2
    assert not (job.run_dir / "model.safetensors").exists()


def test_method_config_options():
    method = get_method("supervised")
    cfg = method.make_config({"weight_decay": 0.0}, iters=7, batch=None)
    assert (cfg.iters, cfg.weight_decay, cfg.batch) == (7, 0.0, 8)
    with pytest.raises(SfdaError, match="valid options are"):
        method.make_config({"wieght_decay": 0.0})
    with pytest.raises(SfdaError, match="unknown stage 's'.*valid stages are S"):
        method.select("s")
    with pytest.raises(SfdaError, match="unknown method 'atq'"):
        get_method("atq")


def test_train_source_cli(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch)
    r = invoke(["train-source", "--target", "cityscapes", "--data-root", tmp_path, "--arch", "tiny",
                "--iters", 4, "--batch", 2, "--crop", 32, 32, "--eval-every", 2, "--workers", 0, "--name", "src"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "train-source" / "src"
    for f in ("model.safetensors", "stage_S.safetensors", "metrics.json", "log.txt", "losses.png",
              "iou_before_after.png", "config.yaml"):
        assert (run / f).is_file(), f
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = ModelMeta.from_json(f.metadata()["sfda_deploy"])
    # input_size is the frame size the model is deployed at (tiny frames are 48×64), not the 32×32 crop
    assert meta.arch == "tiny" and meta.input_size == (48, 64) and meta.mean == (123.675, 116.28, 103.53)
    assert meta.provenance[-1]["method"] == "supervised" and meta.provenance[-1]["iterations_per_stage"] == 4
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert "miou" in metrics["before"] and len(metrics["S"]["evals"]) == 1 and "miou" in metrics["S"]["eval"]


def test_train_source_empty_target(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, empty=True)
    r = invoke(["train-source", "--data-root", tmp_path, "--arch", "tiny", "--iters", 2])
    assert_user_error(r, "has no images")


def test_a_borrowed_stage_records_its_own_iterations():
    # --propagate's stage P runs its own config: the checkpoint says P ran 3 iterations, not the method's 5
    from types import SimpleNamespace

    from sfda_deploy.adapt.methods.base import Stage

    job = SimpleNamespace(meta=ModelMeta(arch="tiny"), provenance={"command": "adapt"},
                          method=SimpleNamespace(name="ldbe"), cfg=SimpleNamespace(iters=5))
    own, borrowed = Stage("LD", None), Stage("P", None, cfg=SimpleNamespace(iters=3))
    last = LS.final_meta(job, [own, borrowed]).provenance[-1]
    assert last["iterations"] == {"LD": 5, "P": 3} and last["iterations_per_stage"] is None
    assert LS.final_meta(job, [own]).provenance[-1]["iterations_per_stage"] == 5
