"""The peer recipes (LDBE, PR-SFDA, HIAST, CPSL) on the loop: CLI runs, rounds, bad input, helpers."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from sfda_deploy.adapt import loop as L
from sfda_deploy.adapt import loop_state as LS
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.adapt.methods.base import round_bounds, round_of
from sfda_deploy.adapt.methods.hiast import hpla_paste
from sfda_deploy.adapt.methods.ldbe import be_targets, round_rho
from sfda_deploy.adapt.methods.prsfda import noise_aware_losses
from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.runs import new_run_dir
from tests.conftest import assert_user_error
from tests.tiny_data import TinyDataset, patch_datasets

PEERS = ("ldbe", "prsfda", "hiast", "cpsl")
EXPECTED_LOSSES = {"ldbe": ("ce", "ent", "neg"), "prsfda": ("ms", "nl", "pl"), "hiast": ("ce", "kld", "ent", "cst"),
                   "cpsl": ("ce", "rce", "sl", "pc")}


def tiny_source(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=19)
    return save_checkpoint(tmp_path / "source.safetensors", model, ModelMeta(arch="tiny", input_size=(32, 32)))


def _adapt_args(tmp_path, source, method, iters=4):
    return ["adapt", "--target", "cityscapes", "--data-root", tmp_path, "--source", source, "--method", method,
            "--iters", iters, "--batch", 2, "--crop", 32, 32, "--workers", 0, "--name", method]


@pytest.mark.parametrize("method", PEERS)
def test_recipe_runs_through_the_cli(invoke, monkeypatch, tmp_path, method):
    patch_datasets(monkeypatch, n=4, size=(40, 48))
    r = invoke(_adapt_args(tmp_path, tiny_source(tmp_path), method))
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "adapt" / method
    metrics = json.loads((run / "metrics.json").read_text())
    stage = get_method(method).stages[0].name
    assert metrics[stage]["iters"] == 4 and "miou" in metrics[stage]["eval"]
    src = load_file(str(tmp_path / "source.safetensors"))
    # the last iterate (what ships is the label-free selection's pick, which may be the AdaBN baseline)
    out = load_file(str(run / f"stage_{get_method(method).stages[-1].name}.safetensors"))
    weights = [name for name, _ in build_model("tiny", num_classes=19).named_parameters()]
    unchanged = [k for k in weights if torch.equal(src[k], out[k])]
    assert unchanged == [], f"{method} left {unchanged} as the source had them"  # every weight trained
    assert all(torch.isfinite(out[k]).all() for k in weights)
    history = LS.load_resume(run)["history"]
    logged = set().union(*(h.keys() for h in history if h["stage"] == stage))
    assert set(EXPECTED_LOSSES[method]) <= logged, (method, logged)  # each of the recipe's terms was computed


def test_propagate_after_a_peer_method_through_the_cli(invoke, monkeypatch, tmp_path):
    # --propagate on LDBE: ATP's stage P runs after LDBE's own stage, with --set propagate.<key> for P
    patch_datasets(monkeypatch, n=6, size=(40, 48))
    sets = ["ignore_top=0", "ignore_bottom=0", "proj_dim=8", "contrast_start=1", "warmup_iters=0"]
    r = invoke(_adapt_args(tmp_path, tiny_source(tmp_path), "ldbe", iters=2) + ["--propagate"]
               + [a for kv in sets for a in ("--set", f"propagate.{kv}")])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "adapt" / "ldbe"
    metrics = json.loads((run / "metrics.json").read_text())
    ldbe_stage = get_method("ldbe").stages[-1].name
    assert list(metrics)[-4:] == ["LD", "BE", "P", "selection"] and "miou" in metrics["P"]["eval"]
    assert (run / "stage_P.safetensors").is_file()
    history = LS.load_resume(run)["history"]
    assert {"ce_easy", "contrast", "ce_mix"} <= set().union(*(h.keys() for h in history if h["stage"] == "P"))
    assert not torch.equal(load_file(str(run / f"stage_{ldbe_stage}.safetensors"))["classifier.weight"],
                           load_file(str(run / "model.safetensors"))["classifier.weight"])  # P trained on


def test_unknown_method_suggests(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch)
    r = invoke(_adapt_args(tmp_path, tiny_source(tmp_path), "hiats"))
    assert_user_error(r, "unknown method 'hiats'", "hiast")


def test_unknown_option_names_the_valid_ones(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch)
    r = invoke(_adapt_args(tmp_path, tiny_source(tmp_path), "ldbe") + ["--set", "roh=0.2"])
    assert_user_error(r, "unknown option 'roh' for method ldbe", "rho", "valid options are")


def test_budget_smaller_than_the_rounds(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch)
    r = invoke(_adapt_args(tmp_path, tiny_source(tmp_path), "hiast", iters=2))
    assert_user_error(r, "runs 3 rounds", "--iters 3")
    assert not (tmp_path / "runs" / "adapt" / "hiast").exists()


def test_options_override_defaults():
    cfg = get_method("ldbe").make_config({"argmax_only": True, "rho": 0.2}, iters=10)
    assert (cfg.argmax_only, cfg.rho, cfg.iters, cfg.rounds, cfg.optimizer) == (True, 0.2, 10, 2, "sgd")
    assert get_method("hiast").make_config({"round_lr": [1e-5, 1e-6]}).round_lr == (1e-5, 1e-6)


def test_round_bounds():
    # 10 iterations in 3 rounds: ⌊0⌋, ⌊10/3⌋ = 3, ⌊20/3⌋ = 6
    assert round_bounds(10, 3) == [0, 3, 6]
    assert [round_of(t, 10, 3) for t in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert round_rho(get_method("ldbe").config(), 1) == pytest.approx(0.15)


def _job(tmp_path, method, name, iters=6, **options):
    torch.manual_seed(0)
    m = get_method(method)
    cfg = m.make_config({"checkpoint_every": 1, **options}, iters=iters, batch=2, crop=(32, 32))
    model = build_model("tiny", num_classes=19)
    return LS.LoopJob(method=m, cfg=cfg, stages=m.stages, student=model, meta=ModelMeta(arch="tiny"),
                     train_set=TinyDataset(n=4, size=(40, 48), labelled=False),
                     run_dir=new_run_dir("adapt", name), device=torch.device("cpu"), seed=1, progress=False)


def test_ldbe_rounds_set_thresholds_and_lr_and_resume_exactly(tmp_path):
    full = _job(tmp_path, "ldbe", "full")
    seen = []
    real = full.stages[0].step

    def spy(batch, student, teacher, state, cfg):
        seen.append((state.store["round"], state.store["lr_scale"], state.store["thresholds"].clone()))
        return real(batch, student, teacher, state, cfg)

    full.stages = (dataclasses.replace(full.stages[0], step=spy),)
    L.run(full)
    assert [s[0] for s in seen] == [0, 0, 0, 1, 1, 1]
    assert seen[3][1] == pytest.approx(2 ** -0.5)  # lr / √2 after round 0
    assert not torch.equal(seen[0][2], seen[3][2])  # round 1's thresholds come from a new pass

    cut = _job(tmp_path, "ldbe", "cut")

    def dying(batch, student, teacher, state, cfg):
        if state.iteration == 4:  # inside round 1: the frozen round model must come from the checkpoint
            raise KeyboardInterrupt
        return real(batch, student, teacher, state, cfg)

    cut.stages = (dataclasses.replace(cut.stages[0], step=dying),)
    with pytest.raises(KeyboardInterrupt):
        L.run(cut)
    resumed = _job(tmp_path, "ldbe", "other")
    resumed.run_dir, resumed.stages = cut.run_dir, resumed.stages[:1]  # LD, as the two runs above
    torch.manual_seed(99)
    L.run(resumed, LS.load_resume(cut.run_dir))
    a = load_file(str(full.run_dir / "model.safetensors"))
    b = load_file(str(cut.run_dir / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_hiast_theta_resets_each_round_and_snapshot_is_the_teacher(tmp_path):
    job = _job(tmp_path, "hiast", "h", iters=3)
    seen = []
    real = job.stages[0].step

    def spy(batch, student, teacher, state, cfg):
        seen.append((state.store["theta"].clone(), state.frozen, state.store["lr_scale"]))
        return real(batch, student, teacher, state, cfg)

    job.stages = (dataclasses.replace(job.stages[0], step=spy),)
    L.run(job)
    assert all(torch.all(t == 0.9) for t, _, _ in seen)  # θ = 0.9 at every round start (one iteration each)
    assert [s for _, _, s in seen] == pytest.approx([1.0, 2 / 3, 1 / 3])  # 3e-6, 2e-6, 1e-6
    assert len({id(f) for _, f, _ in seen}) == 3


def test_be_targets_overwrite_with_pseudo_labels():
    # pixel 0: teacher argmax 1 (0.6), no pseudo label → (1, 0.6); pixel 1: pseudo label 0 → (0, 1.0)
    probs = torch.tensor([[0.4, 0.3], [0.6, 0.7]]).view(1, 2, 1, 2)
    labels = torch.tensor([[[255, 0]]])
    pred, conf = be_targets(probs, labels)
    assert pred.tolist() == [[[1, 0]]] and conf.flatten().tolist() == pytest.approx([0.6, 1.0])


def test_noise_aware_losses_by_hand():
    # 2 classes, 3 pixels, logits so p = [.8 .2], [.4 .6], [.45 .55]; labels 0, 0, 255
    p = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.45, 0.55]])
    logits = p.log().t().reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 0, 255]]])
    out = noise_aware_losses(logits, labels, torch.Generator().manual_seed(0))
    # SelPL: p_ŷ > .5 only at pixel 0 → CE = −ln .8; SelNL: p_ŷ > 1/2 also only pixel 0 (0.4 ≤ .5),
    # c̄ = the other class 1 → −ln(1 − .2) = −ln .8
    assert float(out["pl"]) == pytest.approx(-torch.log(torch.tensor(0.8)).item(), rel=1e-5)
    assert float(out["nl"]) == pytest.approx(-torch.log(torch.tensor(0.8)).item(), rel=1e-5)


def test_hpla_paste_copies_all_hard_pixels_of_the_next_image():
    images = torch.stack([torch.zeros(3, 1, 3), torch.ones(3, 1, 3)])
    labels = torch.tensor([[[0, 0, 0]], [[1, 2, 0]]])
    values = torch.tensor([0.9, 0.5, 0.6], dtype=torch.float64)
    # hard_count 2 → hard classes 1, 2 (values .5, .6); image 1's donor is image 0, which holds
    # neither, so only image 0 gets image 1's class-1 and class-2 pixels (both, whichever was drawn)
    out_i, out_l = hpla_paste(images, labels, values, 2, torch.Generator().manual_seed(0))
    assert out_l.tolist() == [[[1, 2, 0]], [[1, 2, 0]]]
    assert out_i[0, :, 0].tolist() == [[1.0, 1.0, 0.0]] * 3 and torch.equal(out_i[1], images[1])


def test_budget_error_from_make_config():
    with pytest.raises(SfdaError, match="runs 2 rounds"):
        get_method("prsfda").make_config({}, iters=1)


def test_ema_schedule_per_method():
    # HIAST and CPSL average at 0.999 from the first update (their released update_ema/ema code);
    # ATP (DACS) and LDBE ramp alpha_t = min(1 - 1/(t+1), alpha_max)
    from sfda_deploy.adapt.teacher import ema_alpha

    assert ema_alpha(0, 0.999, ramp=False) == 0.999 and ema_alpha(0, 0.999) == 0.0
    ramps = {m: get_method(m).make_config({}).ema_ramp for m in ("atp", "ldbe", "hiast", "cpsl")}
    assert ramps == {"atp": True, "ldbe": True, "hiast": False, "cpsl": False}
    assert get_method("cpsl").make_config({}).teacher_buffers == "copy"
    assert get_method("hiast").make_config({}).teacher_buffers == "copy"


def test_cpsl_self_labeling_runs_one_sinkhorn_per_image():
    from types import SimpleNamespace

    from sfda_deploy.adapt.methods.cpsl import self_labeling_loss

    torch.manual_seed(0)
    cfg = SimpleNamespace(sl_pixels=64, tau=0.08, epsilon=0.05, sinkhorn_iters=3)  # 64 >= 4x4: every pixel
    protos = torch.randn(3, 8)
    prior = torch.tensor([0.5, 0.3, 0.2])
    # image 0's pixels all near prototype 0, image 1's near prototype 2: a pooled Sinkhorn would spread
    # the prior over both images together, one per image enforces it within each
    feats = torch.stack([protos[0][:, None, None] + 0.1 * torch.randn(8, 4, 4),
                         protos[2][:, None, None] + 0.1 * torch.randn(8, 4, 4)])

    def gen():
        return torch.Generator().manual_seed(1)

    both = self_labeling_loss(feats, protos, prior, cfg, gen())
    each = [self_labeling_loss(feats[i:i + 1], protos, prior, cfg, gen()) for i in range(2)]
    assert float(both) == pytest.approx(float(sum(each) / 2), rel=1e-6)
    pooled = self_labeling_loss(feats.permute(1, 0, 2, 3).reshape(1, 8, 8, 4), protos, prior, cfg, gen())
    assert abs(float(pooled) - float(both)) > 1e-3  # the per-image form is not the pooled one


def test_ldbe_runs_ld_then_be_with_a_fresh_optimizer_and_lr_each_round(tmp_path):
    job = _job(tmp_path, "ldbe", "two-stage", iters=4)
    assert [s.name for s in job.stages] == ["LD", "BE"]
    seen = []
    for i, stage in enumerate(job.stages):
        def spy(batch, student, teacher, state, cfg, real=stage.step, name=stage.name):
            seen.append((name, state.iteration, state.store["round"], teacher is not None))
            return real(batch, student, teacher, state, cfg)
        job.stages = tuple(dataclasses.replace(s, step=spy) if j == i else s for j, s in enumerate(job.stages))
    metrics = L.run(job)
    assert [s[:3] for s in seen] == [("LD", 0, 0), ("LD", 1, 0), ("LD", 2, 1), ("LD", 3, 1),
                                     ("BE", 0, 0), ("BE", 1, 0), ("BE", 2, 1), ("BE", 3, 1)]
    assert [s[3] for s in seen] == [False] * 4 + [True] * 4  # only BE has the EMA teacher
    history = LS.load_resume(job.run_dir)["history"]
    assert {"ce", "ent", "neg"} == set(history[0]) - {"stage", "iter"} and "be" in history[-1]
    assert metrics["LD"]["iters"] == metrics["BE"]["iters"] == 4
