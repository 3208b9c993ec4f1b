"""Issue 19, a user's first hour: what the headline commands say (CLI, tiny data, fast)."""
from __future__ import annotations

import io
import json

import yaml

from sfda_deploy.assets import BUNDLED_MODEL
from sfda_deploy.messages import missing_options, plural
from sfda_deploy.progress import LineProgress, pipe_marks
from tests import fixtures_data as fx
from tests.conftest import assert_user_error
from tests.runtime_data import make_checkpoint, make_images
from tests.test_atp_method import _source
from tests.tiny_data import patch_datasets


# ---- item 1: every missing required option at once, and what to use without data ---------------------
def test_adapt_names_every_missing_option_and_the_built_in_data(invoke):
    result = invoke(["adapt", "--target", "cityscapes"])
    assert_user_error(result, "adapt needs --source and --data-root:", "generate-data", "sfda-deploy demo",
                      f"--source {BUNDLED_MODEL}")
    assert_user_error(invoke(["adapt", "--source", "x.safetensors"]), "adapt needs --data-root:")
    assert_user_error(invoke(["compare"]), "compare needs --source and --data-root:", "generate-data")
    assert_user_error(invoke(["train-source"]), "train-source needs --data-root:", "generate-data")


def test_missing_options_and_plural_known_answers():
    assert missing_options({"--a": None, "--b": "x", "--c": ""}) == ["--a", "--c"]
    assert (plural(1, "iteration"), plural(0, "image"), plural(3, "index", "indices")) == \
        ("1 iteration", "0 images", "3 indices")


# ---- item 2: a recipe crop larger than the images ---------------------------------------------------
def _adapt(invoke, tmp_path, *extra):
    return invoke(["adapt", "--data-root", tmp_path, "--source", _source(tmp_path), "--method", "atp",
                   "--stages", "A", "--iters", 1, "--batch", 1, "--workers", 0, "--eval-every", 0, *extra])


def test_recipe_crop_larger_than_the_images_is_fitted_with_a_warning(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, n=2, size=(48, 64))
    result = _adapt(invoke, tmp_path, "--name", "fit")
    assert result.exit_code == 0, result.output
    assert "warning: the recipe's crop 640x640 is larger than the 48x64 target images" in result.output
    assert "using 48x64 (pass --crop H W to choose)" in result.output
    config = yaml.safe_load((tmp_path / "runs" / "adapt" / "fit" / "config.yaml").read_text())
    assert config["recipe"]["crop"] == [48, 64]


def test_a_crop_the_user_gave_is_kept_with_a_warning(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, n=2, size=(48, 64))
    result = _adapt(invoke, tmp_path, "--crop", 32, 96, "--name", "asked")
    assert result.exit_code == 0, result.output
    assert "warning: --crop 32x96 is larger than the 48x64 target images" in result.output
    assert "--crop 32 64 covers whole images" in result.output
    config = yaml.safe_load((tmp_path / "runs" / "adapt" / "asked" / "config.yaml").read_text())
    assert config["recipe"]["crop"] == [32, 96]
    result = _adapt(invoke, tmp_path, "--crop", 32, 32, "--name", "fits")
    assert result.exit_code == 0 and "warning" not in result.output


# ---- item 4: a backend that cannot run the file -----------------------------------------------------
def test_tensorrt_backend_on_a_checkpoint_says_it_needs_an_engine(invoke, tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    make_images(tmp_path / "frames", n=1)
    result = invoke(["segment", tmp_path / "frames", "--model", ckpt, "--backend", "tensorrt"])
    assert_user_error(result, "--backend tensorrt needs a .engine file (and a CUDA GPU with TensorRT), not "
                      "tiny.safetensors", "sfda-deploy export CKPT --trt", "drop --backend")
    assert not (tmp_path / "runs").exists()


# ---- item 5: which model, backend and device run --------------------------------------------------
def test_segment_without_model_says_it_runs_the_bundled_demo_model(invoke, tmp_path):
    make_images(tmp_path / "frames", n=1, size=(32, 64))
    result = invoke(["segment", tmp_path / "frames", "--threads", 1])
    assert result.exit_code == 0, result.output
    assert ("model: the bundled DEMO source model (mobilenetv2_aspp, trained on the synthetic 'source' style "
            "only, not adapted; pass --model for yours); backend: torch on cpu, 1 CPU thread") in result.output


def test_segment_with_a_model_names_it(invoke, tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    make_images(tmp_path / "frames", n=1)
    result = invoke(["segment", tmp_path / "frames", "--model", ckpt, "--threads", 1])
    assert f"model: {ckpt} (tiny, cityscapes19); backend: torch on cpu" in result.output


# ---- item 7: what data each figure used -------------------------------------------------------------
def test_verify_says_it_compared_on_generated_frames(invoke, tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    result = invoke(["verify", ckpt, ckpt])
    assert result.exit_code == 0, result.output
    assert "on 4 generated frames (no --data given: agreement only, no mIoU" in result.output
    assert "latency (median of 4 calls each, in turn)" in result.output


def test_evaluate_says_how_many_images(invoke, tmp_path):
    data = fx.write_cityscapes(tmp_path / "cs", n=2)
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    result = invoke(["evaluate", "--checkpoint", ckpt, "--data-root", data])
    assert result.exit_code == 0, result.output
    assert "over 2 images (cityscapes val)" in result.output


# ---- item 15: progress in a pipe -------------------------------------------------------------------
def test_pipe_marks_known_answers():
    assert [pipe_marks(d, 30) for d in (0, 2, 3, 29, 30, 31)] == [0, 0, 1, 9, 10, 10]
    assert pipe_marks(5, 0) == 0


def test_line_progress_prints_a_line_per_ten_percent_and_the_end_once():
    out, now = io.StringIO(), [0.0]

    def clock():
        now[0] += 1.0  # every look at the clock: one second later
        return now[0]

    bar = LineProgress(range(20), desc="eval", unit="image", stream=out, clock=clock)
    assert list(bar) == list(range(20))
    bar.close()  # a second close prints nothing more
    lines = out.getvalue().splitlines()
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == [f"{p}%" for p in range(10, 101, 10)]
    assert lines[-1].startswith("eval: 100% (20/20 image") and "image/s" in lines[-1]
    assert "\r" not in out.getvalue()


def test_evaluation_progress_shows_in_a_pipe(invoke, tmp_path):
    """CliRunner's stderr is no terminal: the evaluation's bar is a final plain line, printed once."""
    data = fx.write_cityscapes(tmp_path / "cs", n=2)
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    result = invoke(["evaluate", "--checkpoint", ckpt, "--data-root", data])
    lines = [line for line in result.stderr.splitlines() if line.startswith("eval: 100%")]
    assert len(lines) == 1 and "(2/2 batch" in lines[0] and "\r" not in result.stderr, result.stderr
    metrics = json.loads(next((tmp_path / "runs" / "evaluate").rglob("metrics.json")).read_text())
    assert metrics["images"] == 2


# ---- item 9: every option has a line, every choice list is printed, every command says where outputs go --
def test_every_option_of_every_command_has_help_and_outputs_are_named():
    import click

    from sfda_deploy.cli import cli

    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and param.name != "help":
                assert param.help, f"{name} {param.opts[0]} has no help"
        text = command.get_help(click.Context(command, info_name=name))
        assert "runs/" in text or "--out" in text, f"{name}'s help does not say where its outputs go"
        for param in command.params:
            if isinstance(param.type, click.Choice):
                assert "|".join(param.type.choices) in text.replace("\n", "").replace(" ", ""), (name, param.name)


def test_help_texts_a_user_asked_for(invoke):
    def flat(args):
        return " ".join(invoke(args).output.split())

    text = flat(["adapt", "--help"])
    assert "Iterations PER STAGE" in text and "Mixed precision (bf16/fp16) on CUDA; no effect on CPU" in text
    assert "cityscapes, gta5, synthia" in text and "'--set help'" in text
    text = flat(["train-source", "--help"])
    assert "deeplabv2_r101, deeplabv2_r50, mobilenetv2_aspp, tiny" in text
    assert "--onnx" not in invoke(["export", "--help"]).output  # a flag that does nothing is not offered
    assert invoke(["export", "--help"]).exit_code == 0


def test_set_help_lists_the_keys_of_the_method(invoke, tmp_path):
    result = invoke(["adapt", "--method", "atp", "--set", "help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("method atp: stages A") and "  crop = (640, 640)" in result.output
    assert "  iters = " in result.output and not (tmp_path / "runs").exists()


# ---- item 16: threads default to the cores this process may use ------------------------------------
def test_default_threads_follow_the_flag_then_omp_then_the_affinity(monkeypatch):
    import os

    from sfda_deploy.threads import available_cores, default_threads

    assert available_cores() == len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert (default_threads(3, cores=2), default_threads(None, cores=2)) == (3, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads(None, cores=2) == 1


def test_onnxruntime_and_torch_threads_stay_within_the_affinity(monkeypatch, tmp_path):
    import torch

    import sfda_deploy.threads as threads
    from sfda_deploy.runtime.backends import load_backend
    from tests.runtime_data import make_onnx

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 1)  # a process pinned to one core
    try:
        torch.set_num_threads(2)
        backend = load_backend(str(make_onnx(tmp_path / "tiny.onnx")))
        assert backend.session.get_session_options().intra_op_num_threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ---- items 10-13: what the plots are made of (pure parts; the figures were looked at) -----------------
def test_loss_plot_parts_known_answers():
    import numpy as np

    from sfda_deploy.adapt.plots import loss_label, running_mean, stage_runs

    history = [{"stage": "A", "iter": 0, "entropy": 1.0}, {"stage": "A", "iter": 1, "entropy": 3.0},
               {"stage": "T", "iter": 0, "ce": 2.0}]
    assert [(s, [h["iter"] for h in e]) for s, e in stage_runs(history)] == [("A", [0, 1]), ("T", [0])]
    assert running_mean(np.array([1.0, 3.0, np.nan, 5.0]), 2).tolist() == [1.0, 2.0, 3.0, 5.0]
    assert loss_label("npl") == "negative learning (unlikely classes) [npl]" and loss_label("xyz") == "xyz"


def test_absent_classes_come_from_the_labels_not_the_iou():
    from sfda_deploy.metrics import absent_classes

    # class b: no labelled pixel but predicted once (IoU 0, not None); class c: neither
    result = {"iou": {"a": 50.0, "b": 0.0, "c": None}, "confusion": [[2, 1, 0], [0, 0, 0], [0, 0, 0]],
              "unassigned": [0, 0, 0]}
    assert absent_classes(result, ["a", "b", "c"]) == ["b", "c"]
    result["unassigned"] = [0, 1, 0]  # one pixel of b predicted as no class: b is in the labels
    assert absent_classes(result, ["a", "b", "c"]) == ["c"]
    assert absent_classes({"iou": {"a": 1.0, "b": None}}, ["a", "b"]) == ["b"]  # no confusion kept: IoU None


def test_legend_classes_known_answer():
    import numpy as np

    from sfda_deploy.runtime.render import legend_classes

    shares = np.array([0.005, 0.5, 0.2, 0.2, 0.095])
    assert legend_classes(shares) == [1, 2, 3, 4]  # under 1 % left out, largest first, ties in class order
    assert legend_classes(shares, most=2) == [1, 2]


def test_segment_writes_a_legend_beside_the_overlay_and_can_leave_it_out_of_the_video(invoke, tmp_path):
    from tests.runtime_data import make_video

    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    video = make_video(tmp_path / "v.mp4", n=2)
    result = invoke(["segment", video, "--model", ckpt, "--name", "with"])
    run = tmp_path / "runs" / "segment" / "with"
    assert result.exit_code == 0 and (run / "legend.png").stat().st_size > 1000
    assert json.loads((run / "summary.json").read_text())["outputs"]["legend"] == "legend.png"
    assert invoke(["segment", video, "--model", ckpt, "--name", "without", "--no-legend"]).exit_code == 0
    import cv2

    with_legend, without = (cv2.VideoCapture(str(tmp_path / "runs" / "segment" / n / "overlay.mp4")).read()[1]
                            for n in ("with", "without"))
    h = with_legend.shape[0]
    corner = (slice(h // 2, h), slice(0, with_legend.shape[1] // 2))  # the legend sits bottom-left
    assert (with_legend[corner].astype(int) - without[corner].astype(int)).__abs__().mean() > 5
    images = make_images(tmp_path / "frames", n=1)
    assert invoke(["segment", images[0].parent, "--model", ckpt, "--name", "images"]).exit_code == 0
    assert (tmp_path / "runs" / "segment" / "images" / "legend.png").is_file()


def test_previews_are_captioned_and_saved_at_each_stage_end(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, n=2, size=(32, 32))
    result = _adapt(invoke, tmp_path, "--iters", 3, "--crop", 32, 32, "--set", "preview_every=5",
                    "--set", "ignore_top=0", "--set", "ignore_bottom=0", "--name", "pv")
    assert result.exit_code == 0, result.output
    import cv2

    previews = sorted(p.name for p in (tmp_path / "runs" / "adapt" / "pv" / "previews").iterdir())
    assert previews == ["A_000000.png", "A_000002.png"]  # iteration 0 and the stage's last one
    strip = cv2.imread(str(tmp_path / "runs" / "adapt" / "pv" / "previews" / "A_000002.png"))
    band = strip[: strip.shape[0] - 32]  # a white caption band with dark text above the 32-px panels
    assert band.shape[0] > 20 and (band > 250).mean() > 0.7 and (band < 128).any()
