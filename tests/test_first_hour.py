"""Issue 19, a user's first hour: what the headline commands say (CLI, tiny data, fast)."""
from __future__ import annotations

import io
import json

import yaml

from sfda_deploy.messages import BUNDLED_MODEL, missing_options, plural
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
