"""Label-free checkpoint selection in the loop: the best-scored checkpoint ships, a destroyed run ships the
source (``fallback: true``), the state survives ``--resume``, bad flags fail before any run directory."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from sfda_deploy.adapt import loop as L
from sfda_deploy.adapt import loop_state as LS
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.adapt.methods.adabn import adabn_copy
from sfda_deploy.adapt.selection import settings as R
from sfda_deploy.adapt.selection import tracker as S
from sfda_deploy.adapt.selection.probe import sample_indices, score_model
from sfda_deploy.adapt.selection.records import recollapse
from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.runs import new_run_dir
from tests.conftest import assert_user_error
from tests.tiny_data import TinyDataset, patch_datasets

TINY_ATP = ["--set", "ignore_top=0", "--set", "ignore_bottom=0", "--set", "warmup_iters=0"]


@pytest.fixture(scope="module")
def trained_source(tmp_path_factory):
    """A tiny source trained 40 iterations on the band images (≈ 65 mIoU on them, 55 on the shifted style)."""
    root = tmp_path_factory.mktemp("source")
    torch.manual_seed(0)
    method = get_method("supervised")
    cfg = method.make_config({"checkpoint_every": 0}, iters=40, batch=4, crop=(32, 32), lr=1e-2)
    model = build_model("tiny", num_classes=19)
    meta = ModelMeta(arch="tiny", class_set="cityscapes19", input_size=(48, 64))
    (root / "run").mkdir()
    L.run(LS.LoopJob(method=method, cfg=cfg, stages=method.stages, student=model, meta=meta,
                    train_set=TinyDataset(n=10), run_dir=root / "run", device=torch.device("cpu"), seed=0,
                    progress=False))
    return save_checkpoint(root / "src.safetensors", model, meta)


def _same_weights(path_a, path_b) -> bool:
    a, b = load_file(str(path_a)), load_file(str(path_b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_is_due_and_sample_indices():
    assert [d for d in range(1, 9) if S.is_due(d, 8, 3)] == [3, 6]  # the stage end (8) is scored apart
    assert not any(S.is_due(d, 8, 0) for d in range(1, 9))          # 0: stage ends only
    # default: 4 points per stage, at least MIN_PERIOD (50) apart
    assert [d for d in range(1, 400) if S.is_due(d, 400, None)] == [100, 200, 300]
    assert [d for d in range(1, 120) if S.is_due(d, 120, None)] == [50, 100]
    assert sample_indices(10, 4, 0) == sample_indices(10, 4, 0) and len(sample_indices(10, 4, 0)) == 4
    assert sample_indices(3, 16, 0) == [0, 1, 2]


class _Brightness(torch.nn.Module):
    """Class 0 where the pixel's mean value exceeds ``threshold``, else class 1, with logits ±10·distance."""

    output_stride = 2

    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        d = 10 * (x.mean(1, keepdim=True) - self.threshold)
        return torch.cat([d, -d], 1)


@pytest.mark.parametrize("threshold, mix", [(100, 1.0), (120, 0.5)])
def test_score_model_by_hand(threshold, mix):
    # a bright (200) and a dark (0) 4×4 image, read at stride 2: 4 + 4 pixels, one-hot on class 0 / class 1
    meta = ModelMeta(arch="tiny", num_classes=2, class_set="cityscapes19", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    images = [torch.full((3, 4, 4), 200, dtype=torch.uint8), torch.zeros(3, 4, 4, dtype=torch.uint8)]
    s = score_model(_Brightness(threshold), meta, images, "cpu", snd_pixels=1024, seed=0)
    # mixes: 0.55·200 = 110 (should stay class 0), 0.45·200 = 90 (should stay class 1)
    assert s["scores"]["mix"] == mix
    assert s["scores"]["im"] == pytest.approx(math.log(2), abs=1e-9)
    assert s["shares"].tolist() == [0.5, 0.5] and s["marginal"].tolist() == pytest.approx([0.5, 0.5])
    # SND at T = 0.05: each pixel has 3 identical neighbours (similarity 20) and 4 orthogonal ones (0)
    z = 3 * math.exp(20) + 4
    p, q = math.exp(20) / z, 1 / z
    assert s["scores"]["snd"] == pytest.approx(-(3 * p * math.log(p) + 4 * q * math.log(q)), rel=1e-9)


def test_destroyed_run_ships_the_baseline_or_the_source_with_fallback(invoke, monkeypatch, tmp_path,
                                                                       trained_source):
    # AdamW at lr 0.5 wrecks the tiny model within a few steps, with finite losses
    patch_datasets(monkeypatch, n=10, style=0.3)
    common = ["adapt", "--target", "cityscapes", "--data-root", tmp_path, "--source", trained_source,
              "--method", "atp", "--stages", "A", "--iters", 4, "--batch", 2, "--crop", 32, 32, "--workers", 0,
              "--lr", 0.5, "--select-every", 2, *TINY_ATP]
    r = invoke([*common, "--name", "wreck"])
    assert r.exit_code == 0, r.output
    fallback_lines = [line for line in r.stdout.splitlines() if line.startswith("fallback:")]
    assert len(fallback_lines) == 1 and "shipped the AdaBN baseline" in fallback_lines[0], r.stdout
    run = tmp_path / "runs" / "adapt" / "wreck"
    sel = json.loads((run / "metrics.json").read_text())["selection"]
    assert sel["fell_back"] is True and sel["shipped"]["baseline"] is True and sel["reason"]
    assert sel["shipped"]["reference"] is False and sel["baseline"]["stage"] == "adabn"
    assert [(p["stage"], p["iter"]) for p in sel["points"]] == [("A", 2), ("A", 4)]
    assert all(set(p["scores"]) == {"im", "snd", "mix"} and p["miou"] is not None for p in sel["points"])
    assert sel["shipped"]["eval"]["miou"] == sel["baseline"]["miou"]
    assert sel["shipped"]["eval"]["miou"] > max(p["miou"] for p in sel["points"])  # AdaBN was better
    # what ships is the AdaBN model: the source's weights, its BatchNorm statistics re-estimated
    assert invoke(["adapt", "--target", "cityscapes", "--data-root", tmp_path, "--source", trained_source,
                   "--method", "adabn", "--workers", 0, "--name", "adabn"]).exit_code == 0
    assert _same_weights(run / "model.safetensors", tmp_path / "runs" / "adapt" / "adabn" / "model.safetensors")
    assert (run / "selection.png").is_file() and not (run / S.SELECT_DIR).exists()
    # --baseline source: judged against the source alone, the source ships
    r = invoke([*common, "--baseline", "source", "--name", "wreck-src"])
    assert r.exit_code == 0 and "shipped the source model" in r.stdout, r.output
    run = tmp_path / "runs" / "adapt" / "wreck-src"
    sel = json.loads((run / "metrics.json").read_text())["selection"]
    assert sel["fell_back"] is True and sel["shipped"]["reference"] is True and sel["baseline"] is None
    assert _same_weights(run / "model.safetensors", trained_source)
    # --no-fallback ships the criterion's top point instead
    r = invoke([*common, "--no-fallback", "--name", "raw"])
    assert r.exit_code == 0 and "fallback:" not in r.stdout, r.output
    sel = json.loads((tmp_path / "runs" / "adapt" / "raw" / "metrics.json").read_text())["selection"]
    assert sel["fell_back"] is False and sel["shipped"]["reference"] is False and sel["shipped"]["baseline"] is False


def _scripted(monkeypatch, scores: list[float], shares: dict[int, list[float]] | None = None):
    """Replace the scorer: call k gives every criterion scores[k] (call 0 is the source); records the weights."""
    seen = []

    def fake(model, meta, images, device, snd_pixels, seed):
        k = len(seen)
        seen.append({n: v.detach().clone() for n, v in model.state_dict().items()})
        share = torch.tensor((shares or {}).get(k, [0.5, 0.5] + [0.0] * 17), dtype=torch.float64)
        return {"scores": {c: scores[k] for c in ("im", "snd", "mix")}, "marginal": share, "shares": share}

    monkeypatch.setattr(S, "score_model", fake)
    return seen


def _job(tmp_path, source, name, spec, iters=6, checkpoint_every=2, baseline=False):
    torch.manual_seed(0)
    method = get_method("supervised")
    cfg = method.make_config({"checkpoint_every": checkpoint_every}, iters=iters, batch=2, crop=(32, 32), lr=1e-2)
    model = build_model("tiny", num_classes=19)
    model.load_state_dict(load_file(str(source)))
    meta = ModelMeta(arch="tiny", input_size=(48, 64))
    data = TinyDataset(n=5)
    make = (lambda m: adabn_copy(m, data, meta, torch.device("cpu"), False)) if baseline else None
    selection = S.Selection(spec, [data[i]["image"] for i in range(3)], meta.classes.names, source,
                            make_baseline=make)
    return LS.LoopJob(method=method, cfg=cfg, stages=method.stages, student=model, meta=meta, train_set=data,
                     run_dir=new_run_dir("adapt", name), device=torch.device("cpu"), seed=3, progress=False,
                     selection=selection)


def test_the_best_scored_checkpoint_ships(monkeypatch, tmp_path, trained_source):
    # source 1.0; points at iterations 2, 4, 6: 1.5, 2.0, 1.2 → iteration 4 ships
    seen = _scripted(monkeypatch, [1.0, 1.5, 2.0, 1.2])
    job = _job(tmp_path, trained_source, "best", S.SelectionSpec(select_every=2))
    metrics = L.run(job)
    sel = metrics["selection"]
    assert (sel["shipped"]["stage"], sel["shipped"]["iter"], sel["fell_back"]) == ("S", 4, False)
    shipped = load_file(str(job.run_dir / "model.safetensors"))
    assert all(torch.equal(shipped[k], seen[2][k]) for k in shipped)
    assert not torch.equal(shipped["classifier.weight"], seen[3]["classifier.weight"])  # not the last iterate
    saved = json.loads((job.run_dir / "metrics.json").read_text())["selection"]
    assert saved["selected"] == {**sel["selected"]} and [p["scores"]["im"] for p in saved["points"]] == [1.5, 2.0, 1.2]
    # the record names each setting as its flag does (--select-by → select_by ...), with the value the run used
    spec = job.selection.spec
    for name in ("select_by", "select_every", "fallback_margin", "fallback", "fallback_by", "floor_tolerance",
                 "floor_sticky", "collapse_ref", "stage_keep"):
        assert saved[name] == getattr(spec, name), name
    assert saved["select_images"] == len(job.selection.images) and saved["floor_by"] == []  # no baseline, no floor


def test_a_collapsed_top_point_is_passed_over(monkeypatch, tmp_path, trained_source):
    # iteration 4 scores best but predicts class 0 on 95 % of pixels (source: 50 %): iteration 2 ships
    seen = _scripted(monkeypatch, [1.0, 1.5, 2.0, 1.2], {2: [0.95, 0.05] + [0.0] * 17})
    job = _job(tmp_path, trained_source, "collapse", S.SelectionSpec(select_every=2))
    sel = L.run(job)["selection"]
    assert (sel["selected"]["iter"], sel["shipped"]["iter"], sel["fell_back"]) == (4, 2, True)
    assert "took over" in sel["reason"] and "took over" in sel["points"][1]["collapse"]
    shipped = load_file(str(job.run_dir / "model.safetensors"))
    assert all(torch.equal(shipped[k], seen[1][k]) for k in shipped)


@pytest.mark.parametrize("reference, ships", [("source", 2), ("adabn", 4), ("agree", 4)])
def test_the_collapse_reference_in_the_loop(monkeypatch, tmp_path, trained_source, reference, ships):
    # the source calls 5 % of the pixels class 3 (AdaBN 1 %); iteration 4 scores best and predicts it on 0.1 %:
    # "vanished" against the source only
    pad = [0.0] * 15
    source = [0.5, 0.3, 0.15, 0.05] + pad
    shares = {0: source, 1: [0.55, 0.3, 0.14, 0.01] + pad, 2: source, 3: [0.56, 0.3, 0.139, 0.001] + pad, 4: source}
    seen = _scripted(monkeypatch, [1.0, 1.2, 1.5, 2.0, 1.3], shares)
    spec = S.SelectionSpec(select_every=2, collapse_ref=reference)
    job = _job(tmp_path, trained_source, f"ref-{reference}", spec, baseline=True)
    sel = L.run(job)["selection"]
    assert sel["collapse_ref"] == reference and (sel["shipped"]["iter"], sel["fell_back"]) == (ships, ships != 4)
    assert bool(sel["points"][1]["collapse"]) == (reference == "source")
    assert all(len(p["shares"]) == 19 for p in sel["points"] + [sel["reference"], sel["baseline"]])
    shipped = load_file(str(job.run_dir / "model.safetensors"))
    assert all(torch.equal(shipped[k], seen[1 + ships // 2][k]) for k in shipped)
    # the recorded shares replay the loop's verdicts for every reference
    for other in ("source", "adabn", "agree"):
        replayed = recollapse(sel, sel["baseline"], other)
        assert bool(replayed[1]["collapse"]) == (other == "source")


def _scripted_by_criterion(monkeypatch, calls: list[dict]):
    """Like ``_scripted`` with each call's scores given per criterion (mix = im when left out)."""
    seen = []

    def fake(model, meta, images, device, snd_pixels, seed):
        seen.append({n: v.detach().clone() for n, v in model.state_dict().items()})
        c = calls[len(seen) - 1]
        share = torch.tensor([0.5, 0.5] + [0.0] * 17, dtype=torch.float64)
        return {"scores": {"im": c["im"], "snd": c["snd"], "mix": c.get("mix", c["im"])}, "marginal": share,
                "shares": share}

    monkeypatch.setattr(S, "score_model", fake)
    return seen


@pytest.mark.parametrize("sticky, ships", [(True, 2), (False, 6)])
def test_the_floor_passes_over_a_sharpened_checkpoint(monkeypatch, tmp_path, trained_source, sticky, ships):
    # source im 1.0 snd 5.0; AdaBN im 1.2 snd 5.0 (floor: snd ≥ 5.0 − 0.03·5.0 = 4.85);
    # iteration 2: im 1.4, snd 4.9 (kept); 4: im 1.6 but snd 4.0 (under the floor); 6: im 1.5, snd 5.0 (kept,
    # but after the breach: out when the floor is sticky)
    calls = [{"im": 1.0, "snd": 5.0}, {"im": 1.2, "snd": 5.0}, {"im": 1.4, "snd": 4.9}, {"im": 1.6, "snd": 4.0},
             {"im": 1.5, "snd": 5.0}]
    seen = _scripted_by_criterion(monkeypatch, calls)
    job = _job(tmp_path, trained_source, "floor", S.SelectionSpec(select_every=2, floor_sticky=sticky, select_by="im",
                                                                 fallback_by="im"), baseline=True)
    sel = L.run(job)["selection"]
    assert (sel["selected"]["iter"], sel["shipped"]["iter"], sel["fell_back"]) == (4, ships, True)
    assert "fell more than 3% below the AdaBN baseline's snd" in sel["reason"] and sel["floor_sticky"] == sticky
    shipped = load_file(str(job.run_dir / "model.safetensors"))
    assert all(torch.equal(shipped[k], seen[1 + ships // 2][k]) for k in shipped)


def test_the_baseline_ships_when_no_checkpoint_keeps_the_floor(monkeypatch, tmp_path, trained_source):
    # every point's snd is under 4.85; the AdaBN baseline (im 1.2 > 1.0 · 1.01) ships, with its weights
    calls = [{"im": 1.0, "snd": 5.0}, {"im": 1.2, "snd": 5.0}] + [{"im": 2.0, "snd": 4.0}] * 3
    seen = _scripted_by_criterion(monkeypatch, calls)
    job = _job(tmp_path, trained_source, "home", S.SelectionSpec(select_every=2), baseline=True)
    sel = L.run(job)["selection"]
    assert sel["fell_back"] and sel["shipped"]["baseline"] and not sel["shipped"]["reference"]
    assert sel["reason"] == "the first scored checkpoint already fell more than 3% below the AdaBN baseline's snd"
    shipped = load_file(str(job.run_dir / "model.safetensors"))
    assert all(torch.equal(shipped[k], seen[1][k]) for k in shipped)
    source = load_file(str(trained_source))
    assert not all(torch.equal(shipped[k], source[k]) for k in shipped)  # AdaBN moved the BN statistics


@pytest.mark.parametrize("fallback, baseline", [(False, False), (True, True)])
def test_resume_keeps_the_selection_state(tmp_path, trained_source, fallback, baseline):
    # without fallback: the top point ships whatever the collapse detector says; with the AdaBN baseline: its
    # point and file survive the cut, and what ships is decided as if the run had not stopped
    spec = S.SelectionSpec(select_every=2, fallback=fallback)
    full = _job(tmp_path, trained_source, "full", spec, baseline=baseline)
    L.run(full)
    cut = _job(tmp_path, trained_source, "cut", spec, baseline=baseline)
    real_step = cut.stages[0].step

    def dying_step(batch, student, teacher, state, cfg):
        if state.iteration == 5:
            raise KeyboardInterrupt  # after the checkpoint (and the scoring point) at iteration 4
        return real_step(batch, student, teacher, state, cfg)

    cut.stages = (dataclasses.replace(cut.stages[0], step=dying_step),)
    with pytest.raises(KeyboardInterrupt):
        L.run(cut)
    state = LS.load_resume(cut.run_dir)
    assert [p["iter"] for p in state["selection"]["points"]] == [2, 4]
    assert fallback or state["selection"]["best"]["file"]  # with the floor, no point may qualify
    assert (state["selection"]["baseline"] is not None) == baseline
    resumed = _job(tmp_path, trained_source, "other", spec, baseline=baseline)
    resumed.run_dir = cut.run_dir
    torch.manual_seed(123)
    L.run(resumed, state)
    a = json.loads((full.run_dir / "metrics.json").read_text())["selection"]
    b = json.loads((cut.run_dir / "metrics.json").read_text())["selection"]
    assert a["points"] == b["points"] and a["shipped"] == b["shipped"] and a["fell_back"] == b["fell_back"]
    assert a["baseline"] == b["baseline"] and (a["baseline"] is not None) == baseline
    assert _same_weights(full.run_dir / "model.safetensors", cut.run_dir / "model.safetensors")


def _adapt_args(tmp_path, source, *extra):
    return ["adapt", "--target", "cityscapes", "--data-root", tmp_path, "--source", source, "--method", "atp",
            "--stages", "A", "--iters", 2, "--batch", 2, "--crop", 32, 32, "--workers", 0, *extra]


@pytest.mark.parametrize("extra, fragments", [
    (["--select-by", "imm"], ["unknown --select-by 'imm'", "did you mean 'im'", "im, snd, mix"]),
    (["--select-every", "-1"], ["--select-every -1 is not allowed", "0: at stage ends only"]),
    (["--select-images", "1"], ["--select-images 1 is not allowed: use an integer >= 2"]),
    (["--fallback-margin", "-0.5"], ["--fallback-margin -0.5 is not allowed: use a number >= 0"]),
    (["--baseline", "adabm"], ["unknown --baseline 'adabm'", "did you mean 'adabn'"]),
    (["--floor-by", "snd,sdn"], ["unknown --floor-by 'sdn'", "did you mean 'snd'"]),
    (["--floor-tolerance", "1.5"], ["--floor-tolerance 1.5 is not allowed: use a number in [0, 1)"]),
    (["--fallback-by", "sdn"], ["unknown --fallback-by 'sdn'", "did you mean 'snd'"]),
    (["--collapse-ref", "adbn"], ["unknown --collapse-ref 'adbn'", "did you mean 'adabn'"]),
    (["--collapse-ref", "agree", "--baseline", "source"], ["--collapse-ref agree judges", "pass --baseline adabn"]),
    (["--stage-keep", "bst"], ["unknown --stage-keep 'bst'", "did you mean 'best'"]),
])
def test_bad_selection_flags(invoke, monkeypatch, tmp_path, trained_source, extra, fragments):
    patch_datasets(monkeypatch, n=4)
    assert_user_error(invoke(_adapt_args(tmp_path, trained_source, *extra)), *fragments)
    assert not (tmp_path / "runs" / "adapt").exists()


def test_a_target_too_small_to_score(invoke, monkeypatch, tmp_path, trained_source):
    patch_datasets(monkeypatch, n=1, labelled=False)  # one unlabelled image: no val, a 1-image train sample
    assert_user_error(invoke(_adapt_args(tmp_path, trained_source)), "train split has 1 image(s)",
                      "at least 2 are needed")
    assert not (tmp_path / "runs" / "adapt").exists()


def test_resume_with_other_selection_settings_is_refused(invoke, monkeypatch, tmp_path, trained_source):
    patch_datasets(monkeypatch, n=4)
    assert invoke(_adapt_args(tmp_path, trained_source, "--name", "first", *TINY_ATP)).exit_code == 0
    run = tmp_path / "runs" / "adapt" / "first"
    r = invoke(_adapt_args(tmp_path, trained_source, "--resume", run, "--select-by", "mix", "--no-fallback"))
    assert_user_error(r, "--select-by 'mix' differs from 'im+snd'")


def test_a_run_from_before_the_baseline_resumes_only_with_the_old_rule():
    old = {"selection": {"settings": {"select_by": "im", "select_images": 16, "fallback": True, "seed": 0}}}
    with pytest.raises(SfdaError) as e:
        R.check_resume(R.SelectionSpec(), old, "runs/adapt/old")
    assert "--baseline source" in str(e.value) and "--floor-by none" in str(e.value)
    assert "--no-floor-sticky" in str(e.value) and "--select-by im:" in str(e.value)
    assert str(e.value).endswith("pass the same to resume it")
    R.check_resume(R.SelectionSpec(select_by="im", baseline="source", floor_by=(), floor_sticky=False), old,
                   "runs/adapt/old")  # accepted


@pytest.mark.parametrize("keep", ["best", "last"])
def test_stage_keep_hands_on_the_start_of_a_stage_that_made_things_worse(monkeypatch, tmp_path, trained_source, keep):
    # source 1.0; stage S: 1.5 at iteration 2, 0.9 at its end (below its start, the source's 1.0);
    # stage S2: 1.2, then 1.3 at its end (above its start)
    _scripted(monkeypatch, [1.0, 1.5, 0.9, 1.2, 1.3], {k: [0.5, 0.5] + [0.0] * 17 for k in range(5)})
    job = _job(tmp_path, trained_source, f"keep-{keep}", S.SelectionSpec(select_every=2, stage_keep=keep, select_by="im"),
               iters=4)
    first = job.stages[0]
    started = {}

    def s2_step(batch, student, teacher, state, cfg):
        if state.iteration == 0:  # before its first update: the weights S2 was handed
            started.update({n: v.detach().clone() for n, v in student.state_dict().items()})
        return first.step(batch, student, teacher, state, cfg)

    job.stages = (first, dataclasses.replace(first, name="S2", step=s2_step))
    metrics = L.run(job)
    source, s_end = load_file(str(trained_source)), load_file(str(job.run_dir / "stage_S.safetensors"))
    handed = source if keep == "best" else s_end
    assert all(torch.equal(started[k], handed[k]) for k in handed)
    assert not all(torch.equal(source[k], s_end[k]) for k in source)  # stage S did change the weights
    sel = json.loads((job.run_dir / "metrics.json").read_text())
    assert sel["selection"]["stage_keep"] == keep
    if keep == "best":
        assert (sel["S"]["handed_on"], sel["S2"]["handed_on"]) == ("start", "end")
        assert sel["selection"]["handed_on"] == [
            {"stage": "S", "kept": "start", "select_by": "im", "end_score": 0.9,
             "start": {"stage": "source", "iter": 0}, "start_score": 1.0},
            {"stage": "S2", "kept": "end", "select_by": "im", "end_score": 1.3,
             "start": {"stage": "source", "iter": 0}, "start_score": 1.0}]
    else:
        assert "handed_on" not in sel["S"] and sel["selection"]["handed_on"] == []
    assert metrics["selection"]["shipped"]["stage"] == "S" and metrics["selection"]["shipped"]["iter"] == 2
    assert not (job.run_dir / S.SELECT_DIR).exists()


def test_stage_keep_survives_a_resume(monkeypatch, tmp_path, trained_source):
    # cut inside S: the resumed run hands S's start (saved before the cut) to S2 and ships what the full run does
    calls = [1.0, 1.5, 0.9, 1.2, 1.3]
    spec = S.SelectionSpec(select_every=2, stage_keep="best")

    def two_stage(name, step=None):
        job = _job(tmp_path, trained_source, name, spec, iters=4, checkpoint_every=1)
        first = job.stages[0]
        job.stages = (dataclasses.replace(first, step=step or first.step), dataclasses.replace(first, name="S2"))
        return job

    _scripted(monkeypatch, calls)
    full = two_stage("keep-full")
    L.run(full)
    real_step = full.stages[0].step

    def dying_step(batch, student, teacher, state, cfg):
        if state.iteration == 3:
            raise KeyboardInterrupt  # after S's checkpoint at iteration 3 and its scoring point at 2
        return real_step(batch, student, teacher, state, cfg)

    _scripted(monkeypatch, calls)
    cut = two_stage("keep-cut", dying_step)
    with pytest.raises(KeyboardInterrupt):
        L.run(cut)
    state = LS.load_resume(cut.run_dir)
    assert state["selection"]["handed_on"] == [] and state["stage_index"] == 0 and state["iteration"] == 3
    _scripted(monkeypatch, calls[2:])  # what is left to score: S's end, S2's two points
    resumed = two_stage("keep-other")  # a fresh selection: its state comes from last.pt
    resumed.run_dir = cut.run_dir
    torch.manual_seed(123)
    L.run(resumed, state)
    a = json.loads((full.run_dir / "metrics.json").read_text())["selection"]
    b = json.loads((cut.run_dir / "metrics.json").read_text())["selection"]
    assert a["handed_on"] == b["handed_on"] and a["handed_on"][0]["kept"] == "start" and a["shipped"] == b["shipped"]
    assert _same_weights(full.run_dir / "stage_S2.safetensors", cut.run_dir / "stage_S2.safetensors")
