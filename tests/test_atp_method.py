"""ATP on the loop: all three stages through the CLI, --propagate, exact resume in stage P, bad inputs."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sfda_deploy.adapt import loop as L
from sfda_deploy.adapt import loop_state as LS
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.runs import new_run_dir
from tests.conftest import assert_user_error
from tests.tiny_data import TinyDataset, patch_datasets

# tiny crops: no Cityscapes border rows, small projection, contrast from iteration 1
TINY = ["--set", "ignore_top=0", "--set", "ignore_bottom=0", "--set", "proj_dim=8", "--set", "contrast_start=1",
        "--set", "preview_every=2", "--set", "warmup_iters=0"]


def _source(tmp_path, class_set="cityscapes19"):
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=19)
    return save_checkpoint(tmp_path / "src.safetensors", model,
                           ModelMeta(arch="tiny", class_set=class_set, input_size=(32, 32)))


def _adapt(invoke, tmp_path, *extra):
    return invoke(["adapt", "--target", "cityscapes", "--data-root", tmp_path, "--source", _source(tmp_path),
                   "--iters", 3, "--batch", 2, "--crop", 32, 32, "--workers", 0, *extra])


def _no_model_written(tmp_path):
    assert not list((tmp_path / "runs").rglob("model.safetensors"))


def test_atp_all_stages_cli(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, n=10, style=0.3)
    r = _adapt(invoke, tmp_path, "--method", "atp", "--stages", "A,T,P", "--name", "atp", *TINY)
    assert r.exit_code == 0, r.output
    for stage, loss in (("A", "entropy="), ("T", "npl="), ("P", "ce_mix=")):  # the progress bar: stage, it/s, losses
        bar = [line for line in r.stderr.replace("\r", "\n").splitlines() if line.startswith(f"atp {stage}: 100%")]
        # tqdm shows the rate as "it/s", or "s/it" when an iteration takes over a second (a busy machine)
        assert bar and "3/3" in bar[-1] and ("it/s" in bar[-1] or "s/it" in bar[-1]) and loss in bar[-1], r.stderr[-600:]
    run = tmp_path / "runs" / "adapt" / "atp"
    for f in ("model.safetensors", "stage_A.safetensors", "stage_T.safetensors", "stage_P.safetensors",
              "metrics.json", "losses.png", "iou_before_after.png", "config.yaml", "log.txt"):
        assert (run / f).is_file(), f
    previews = sorted(p.name for p in (run / "previews").iterdir())
    assert previews == sorted(f"{s}_{t:06d}.png" for s in "ATP" for t in (0, 2))
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = ModelMeta.from_json(f.metadata()["sfda_deploy"])
    assert meta.provenance[-1]["method"] == "atp" and meta.provenance[-1]["stages"] == ["A", "T", "P"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert "miou" in metrics["before"] and all("miou" in metrics[s]["eval"] for s in "ATP")
    history = LS.load_resume(run)["history"]
    names = {s: set().union(*(h.keys() for h in history if h["stage"] == s)) for s in "ATP"}
    assert {"entropy", "diversity"} <= names["A"] and {"ce", "npl"} <= names["T"]
    assert {"ce_easy", "npl_easy", "contrast", "ce_mix", "npl_mix"} <= names["P"]
    assert LS.load_resume(run)["stage_index"] == 3  # all three stages recorded as complete


def test_adapt_config_yaml_with_flags_winning(invoke, monkeypatch, tmp_path):
    import yaml

    patch_datasets(monkeypatch, n=6)
    cfg = tmp_path / "adapt.yaml"
    cfg.write_text(yaml.safe_dump({
        "target": "cityscapes", "data_root": str(tmp_path), "source": str(_source(tmp_path)), "method": "atp",
        "stages": "A", "iters": 5, "batch": 2, "crop": [32, 32], "workers": 0, "name": "from-yaml",
        "options": {"ignore_top": 0, "ignore_bottom": 0, "gamma": 2.0, "preview_every": 0}}))
    r = invoke(["adapt", "--config", cfg, "--iters", 2, "--set", "gamma=3.0"])  # flags and --set win over the file
    assert r.exit_code == 0, r.output
    written = yaml.safe_load((tmp_path / "runs" / "adapt" / "from-yaml" / "config.yaml").read_text())
    assert (written["iters"], written["stages"], written["batch"]) == (2, "A", 2)
    assert written["recipe"]["gamma"] == 3.0 and written["recipe"]["ignore_top"] == 0
    metrics = json.loads((tmp_path / "runs" / "adapt" / "from-yaml" / "metrics.json").read_text())
    assert list(metrics) == ["before", "A", "selection"] and metrics["A"]["iters"] == 2


def test_propagate_after_another_method(invoke, monkeypatch, tmp_path):
    # ATP's stage A alone, then --propagate appends P with ATP's config
    patch_datasets(monkeypatch, n=10)
    r = _adapt(invoke, tmp_path, "--iters", 1, "--method", "atp", "--stages", "A", "--propagate", "--name", "ap",
               "--set", "ignore_top=0", "--set", "ignore_bottom=0", "--set", "proj_dim=8")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "adapt" / "ap" / "stage_P.safetensors").is_file()


def test_propagate_stage_config_for_any_method(monkeypatch):
    from sfda_deploy.commands.adapt_recipe import with_propagation
    from sfda_deploy.config import AdaptConfig

    sup = get_method("supervised")
    cfg = AdaptConfig(method="supervised", propagate=True)
    stages = with_propagation(cfg, sup.stages, sup.make_config({}), {"ignore_bottom": 0}, {"iters": 5})
    assert [s.name for s in stages] == ["S", "P"]
    assert stages[1].cfg.ignore_bottom == 0 and stages[1].cfg.iters == 5 and stages[1].cfg.tau_n == 0.04


def _atp_job(run_dir, iters=4):
    torch.manual_seed(0)
    method = get_method("atp")
    cfg = method.make_config({"checkpoint_every": 2, "ignore_top": 0, "ignore_bottom": 0, "proj_dim": 8,
                              "contrast_start": 1, "warmup_iters": 0, "preview_every": 0},
                             iters=iters, batch=2, crop=(32, 32), lr=1e-3)
    return LS.LoopJob(method=method, cfg=cfg, stages=method.select("P"), student=build_model("tiny", num_classes=19),
                     meta=ModelMeta(arch="tiny", input_size=(32, 32)), train_set=TinyDataset(n=10, style=0.3),
                     run_dir=run_dir, device=torch.device("cpu"), seed=5, progress=False)


@pytest.mark.parametrize("die_at, saved_at", [(3, 2), (1, 0)], ids=["mid-stage", "at-stage-start"])
def test_atp_resume_inside_stage_p_is_exact(die_at, saved_at):
    # saved_at 0: the checkpoint written right after P's set-up (ranking, projection head): resuming from
    # it must not set the stage up again (a new head would draw other random weights)
    full = _atp_job(new_run_dir("adapt", "full"))
    L.run(full)
    cut = _atp_job(new_run_dir("adapt", "cut"))
    real = cut.stages[0].step

    def dying(batch, student, teacher, state, cfg):
        if state.iteration == die_at:
            raise KeyboardInterrupt
        return real(batch, student, teacher, state, cfg)

    cut.stages = (dataclasses.replace(cut.stages[0], step=dying),)
    with pytest.raises(KeyboardInterrupt):
        L.run(cut)
    state = LS.load_resume(cut.run_dir)
    assert (state["stage_index"], state["iteration"]) == (0, saved_at) and "easy" in state["store"]["streams"]
    assert ("prototypes" in state["store"]) == (saved_at > 0)  # accumulated from the first step on
    assert not (cut.run_dir / "model.safetensors").exists()
    resumed = _atp_job(cut.run_dir)
    heads = []
    setup = LS.setup_stage

    def spy(*args):
        st = setup(*args)
        heads.append({k: v.clone() for k, v in st.state.extras["proj"].state_dict().items()})
        return st

    torch.manual_seed(99)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(L, "setup_stage", spy)
        L.run(resumed, state)
    assert all(torch.equal(heads[0][k], v) for k, v in state["extras"]["proj"].items())  # the saved head, not a new one
    a, b = load_file(str(full.run_dir / "model.safetensors")), load_file(str(cut.run_dir / "model.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------------------------- bad input
def test_empty_target(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, empty=True)
    assert_user_error(_adapt(invoke, tmp_path, "--method", "atp"), "has no images")
    _no_model_written(tmp_path)


def test_class_set_mismatch(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, class_set="synthia16")
    assert_user_error(_adapt(invoke, tmp_path, "--method", "atp"), "class set synthia16", "cityscapes19")
    _no_model_written(tmp_path)


def test_unknown_stage(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch)
    assert_user_error(_adapt(invoke, tmp_path, "--method", "atp", "--stages", "A,X"), "unknown stage 'X'",
                      "valid stages are A,T,P")
    _no_model_written(tmp_path)


def test_resume_not_a_run(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch)
    (tmp_path / "junk").mkdir()
    assert_user_error(_adapt(invoke, tmp_path, "--method", "atp", "--resume", tmp_path / "junk"),
                      "not a resumable adapt run")
    _no_model_written(tmp_path)


def test_resume_of_another_method(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch)
    assert _adapt(invoke, tmp_path, "--method", "ldbe", "--name", "ld").exit_code == 0
    run = tmp_path / "runs" / "adapt" / "ld"
    (run / "model.safetensors").unlink()  # as if it had been interrupted
    assert_user_error(_adapt(invoke, tmp_path, "--method", "atp", "--resume", run),
                      "--method 'atp' differs from 'ldbe'", "drop --method")
    assert not (run / "model.safetensors").exists()


def test_too_few_images_for_the_easy_split(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, n=3)  # int(3 · .3) = 0 easy images
    assert_user_error(_adapt(invoke, tmp_path, "--method", "atp", "--stages", "P", *TINY), "0 easy and 3 hard", "easy_ratio")
    _no_model_written(tmp_path)


def test_schedule_points_keep_their_share_when_iters_changes():
    atp = get_method("atp")
    assert (atp.make_config({}).warmup_iters, atp.make_config({}).contrast_start) == (1500, 1500)  # 40 000 it
    short = atp.make_config({}, iters=4000)  # 1500 · 4000 / 40 000 = 150
    assert (short.iters, short.warmup_iters, short.contrast_start) == (4000, 150, 150)
    assert short.ema_alpha == 0.999  # the teacher's memory is not scaled (see scaled_schedule)
    tiny = atp.make_config({}, iters=10)  # 1500 · 10 / 40 000 = 0.375 → 0
    assert (tiny.warmup_iters, tiny.contrast_start) == (0, 0)
    # a value the user sets is theirs
    mine = atp.make_config({"warmup_iters": 7}, iters=4000)
    assert (mine.warmup_iters, mine.contrast_start) == (7, 150)


def test_clean_scl_option_reaches_stage_p(invoke, monkeypatch, tmp_path):
    # released form: unit features · raw prototypes / 100 → L_scl ≈ ln 19 − 1 = 1.944 (logits within ±.01);
    # --set scl_temperature=0.1: cosine / .1, logits up to ±10 → far from it.
    # confidence_threshold=0: q = 1, so the untrained tiny teacher's hard pixels are not all weighted 0
    patch_datasets(monkeypatch, n=10, style=0.3)
    contrast = {}
    for form, sets in (("released", []), ("clean", ["--set", "scl_temperature=0.1"])):
        r = _adapt(invoke, tmp_path, "--method", "atp", "--stages", "P", "--name", form, *TINY,
                   "--set", "confidence_threshold=0", *sets)
        assert r.exit_code == 0, r.output
        history = LS.load_resume(tmp_path / "runs" / "adapt" / form)["history"]
        contrast[form] = [h["contrast"] for h in history if "contrast" in h]
    assert contrast["released"] and all(abs(v - (math.log(19) - 1)) < 0.02 for v in contrast["released"])
    assert all(abs(v - (math.log(19) - 1)) > 0.1 for v in contrast["clean"])


def test_clean_scl_option_checked():
    atp = get_method("atp")
    assert atp.make_config({"scl_temperature": 0.1}).scl_temperature == 0.1
    with pytest.raises(SfdaError, match="scl_temperature must be 0"):
        atp.make_config({"scl_temperature": -1.0})
    with pytest.raises(SfdaError, match="set one of them"):
        atp.make_config({"scl_temperature": 0.1, "contrast_temp": 0.1})
