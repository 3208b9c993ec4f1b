"""Issue 2's "Bad input" list through the CLI: one line naming the problem and the fix, exit 2, no
traceback, nothing half-written (no run directory left behind)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from tests import fixtures_data as fx
from tests.conftest import assert_user_error, copy_of
from tests.test_evaluate import tiny_checkpoint


def no_runs() -> bool:
    """True when no command left a run directory ``<command>/<name>`` (or any file) under $SFDA_RUNS_DIR."""
    root = Path(os.environ["SFDA_RUNS_DIR"])
    return not root.is_dir() or not any(root.glob("*/*")) and not any(p.is_file() for p in root.rglob("*"))


@pytest.fixture
def data(tmp_path, session_files):
    return copy_of(session_files.cityscapes, tmp_path)


@pytest.fixture
def ckpt(tmp_path):
    return tiny_checkpoint(tmp_path / "model.safetensors")


def evaluate(invoke, *args):
    return invoke(["evaluate", *args])


# ---- --data-root ------------------------------------------------------------------------------------
def test_missing_data_root(invoke, ckpt):
    assert_user_error(evaluate(invoke, "--checkpoint", ckpt), "--target cityscapes needs --data-root")
    assert no_runs()


def test_data_root_does_not_exist(invoke, ckpt, tmp_path):
    assert_user_error(evaluate(invoke, "--checkpoint", ckpt, "--data-root", tmp_path / "nope"),
                      f"--data-root {tmp_path / 'nope'} does not exist")
    assert no_runs()


def test_wrong_layout_names_what_was_expected_where(invoke, ckpt, tmp_path):
    gta = fx.write_gta5(tmp_path / "gta", n=1)  # a GTA5 tree passed as Cityscapes
    res = evaluate(invoke, "--checkpoint", ckpt, "--data-root", gta)
    assert_user_error(res, f"--data-root {gta} has no leftImg8bit/val/*/*_leftImg8bit.png", "Cityscapes root")
    assert no_runs()


def test_missing_label_file(invoke, ckpt, data):
    label = next((data / "gtFine").rglob("*.png"))
    label.unlink()
    assert_user_error(evaluate(invoke, "--checkpoint", ckpt, "--data-root", data), f"expected {label}")


def test_train_source_wrong_layout(invoke, tmp_path):
    res = invoke(["train-source", "--target", "gta5", "--data-root", tmp_path, "--iters", 1])
    assert_user_error(res, "has no images/*.png", "GTA5 root")
    assert no_runs()


# ---- unknown names: the closest is suggested ---------------------------------------------------------
def test_unknown_target_suggests(invoke, ckpt, data):
    assert_user_error(evaluate(invoke, "--checkpoint", ckpt, "--target", "citiscapes", "--data-root", data),
                      "unknown --target 'citiscapes'", "did you mean 'cityscapes'")
    assert no_runs()


def test_unlabelled_target_for_evaluate(invoke, ckpt, data):
    assert_user_error(evaluate(invoke, "--checkpoint", ckpt, "--target", "folder", "--data-root", data),
                      "has no labels")


def test_unknown_model_suggests(invoke, data):
    res = invoke(["train-source", "--target", "cityscapes", "--data-root", data, "--split", "val",
                  "--arch", "mobilenetv2_asp", "--iters", 1])
    assert_user_error(res, "unknown model 'mobilenetv2_asp'", "did you mean 'mobilenetv2_aspp'")
    assert no_runs()


def test_unknown_class_set_suggests(invoke, tmp_path, data):
    res = evaluate(invoke, "--predictions", tmp_path, "--data-root", data, "--class-set", "synthia61")
    assert_user_error(res, "did you mean 'synthia16'")


def test_evaluate_needs_exactly_one_source(invoke, ckpt, data, tmp_path):
    assert_user_error(evaluate(invoke, "--data-root", data), "exactly one of --checkpoint")
    assert_user_error(evaluate(invoke, "--checkpoint", ckpt, "--predictions", tmp_path, "--data-root", data),
                      "exactly one of --checkpoint")


# ---- checkpoints ---------------------------------------------------------------------------------------
def test_checkpoint_missing(invoke, data, tmp_path):
    assert_user_error(evaluate(invoke, "--checkpoint", tmp_path / "nope.safetensors", "--data-root", data),
                      "does not exist")
    assert_user_error(invoke(["import-pth", tmp_path / "nope.pth", "--arch", "tiny", "--normalization", "imagenet"]),
                      "does not exist")
    assert no_runs()


def test_checkpoint_truncated(invoke, ckpt, data, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(ckpt.read_bytes()[:-200])
    assert_user_error(evaluate(invoke, "--checkpoint", cut, "--data-root", data), "truncated")
    pth = tmp_path / "cut.pth"
    torch.save(build_model("tiny", num_classes=19).state_dict(), pth)
    pth.write_bytes(pth.read_bytes()[:-300])
    assert_user_error(invoke(["import-pth", pth, "--arch", "tiny", "--normalization", "imagenet"]), "truncated")
    assert no_runs()


def test_not_a_checkpoint(invoke, data, tmp_path):
    png = next((data / "leftImg8bit").rglob("*.png"))
    fake = tmp_path / "image.safetensors"
    fake.write_bytes(png.read_bytes())
    assert_user_error(evaluate(invoke, "--checkpoint", fake, "--data-root", data), "not a readable safetensors")
    fake_pth = tmp_path / "image.pth"
    fake_pth.write_bytes(png.read_bytes())
    assert_user_error(invoke(["import-pth", fake_pth, "--arch", "tiny", "--normalization", "imagenet"]),
                      "not a readable .pth")
    plain = tmp_path / "plain.safetensors"  # a valid safetensors file that sfda-deploy did not write
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(plain))
    assert_user_error(evaluate(invoke, "--checkpoint", plain, "--data-root", data), "has no sfda-deploy metadata")
    assert no_runs()


class _Payload:
    """Unpickling this would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_pth_that_would_run_code_is_refused(invoke, tmp_path, container):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    weights = build_model("tiny", num_classes=19).state_dict()
    obj = {"state_dict": weights, "hook": _Payload(marker)}
    if container == "zip":
        torch.save(obj, evil)  # torch's zip format
    else:
        with open(evil, "wb") as f:  # a bare pickle, as very old checkpoints are
            pickle.dump(obj, f)
    res = invoke(["import-pth", evil, "--arch", "tiny", "--normalization", "imagenet"])
    assert_user_error(res, str(evil), "contains pickled code/objects", f"{os.system.__module__}.system",
                      "it was not loaded")
    # evaluate refuses any .pth without metadata before reading it
    assert_user_error(evaluate(invoke, "--checkpoint", evil, "--data-root", tmp_path), "legacy .pth")
    assert not marker.exists(), "the pickle's code was executed"
    assert no_runs()


def test_class_count_mismatch(invoke, tmp_path, ckpt, data):
    # A checkpoint whose 16-class weights claim the 19-class set.
    model = build_model("tiny", num_classes=16)
    bad = save_checkpoint(tmp_path / "bad.safetensors", model, ModelMeta(arch="tiny", num_classes=16))
    assert_user_error(evaluate(invoke, "--checkpoint", bad, "--data-root", data),
                      "class-count mismatch", "16 classes", "cityscapes19")
    # A 19-class checkpoint asked to score 16 classes.
    assert_user_error(evaluate(invoke, "--checkpoint", ckpt, "--data-root", data, "--class-set", "synthia16"),
                      "class-count mismatch", "--class-set synthia16 has 16")
    # A 19-class .pth imported as a 16-class model.
    pth = tmp_path / "w.pth"
    torch.save(build_model("tiny", num_classes=19).state_dict(), pth)
    assert_user_error(invoke(["import-pth", pth, "--arch", "tiny", "--normalization", "imagenet",
                              "--class-set", "synthia16"]), "class-count mismatch")
    assert no_runs()


# ---- corrupt files: evaluation fails clearly (skipping would score other images than asked) -------------
@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image(invoke, ckpt, data, workers):
    bad = fx.corrupt(sorted((data / "leftImg8bit").rglob("*.png"))[1])
    res = evaluate(invoke, "--checkpoint", ckpt, "--data-root", data, "--workers", workers)
    assert_user_error(res, f"cannot decode image {bad}", "replace or delete it")
    assert no_runs()


def test_corrupt_label_and_prediction(invoke, data, tmp_path):
    preds = tmp_path / "preds"
    for img in (data / "leftImg8bit").rglob("*.png"):
        fx.write_raw(preds / f"{img.stem}.png", fx.bands(fx.CITYSCAPES_IDS))
    bad_pred = fx.corrupt(sorted(preds.iterdir())[1])
    res = evaluate(invoke, "--predictions", preds, "--data-root", data)
    assert_user_error(res, f"cannot decode label {bad_pred}")
    bad_pred.unlink()
    assert_user_error(evaluate(invoke, "--predictions", preds, "--data-root", data),
                      "lacks 1 of 2 images", f"{bad_pred.stem}.png")
    fx.write_raw(bad_pred, fx.bands(fx.CITYSCAPES_IDS))
    bad_label = fx.corrupt(sorted((data / "gtFine").rglob("*.png"))[0])
    assert_user_error(evaluate(invoke, "--predictions", preds, "--data-root", data), f"cannot decode label {bad_label}")
    assert no_runs()


def test_colour_or_wrong_size_prediction(invoke, data, tmp_path):
    preds = tmp_path / "preds"
    imgs = sorted((data / "leftImg8bit").rglob("*.png"))
    fx.write_raw(preds / f"{imgs[0].stem}.png", fx.bands(fx.CITYSCAPES_IDS))
    fx.write_rgb(preds / f"{imgs[1].stem}.png", fx.rgb(0))
    assert_user_error(evaluate(invoke, "--predictions", preds, "--data-root", data), "3 channels", "single-channel")
    fx.write_raw(preds / f"{imgs[1].stem}.png", fx.bands((7,), size=(8, 8)))
    assert_user_error(evaluate(invoke, "--predictions", preds, "--data-root", data), "save predictions at the label size")
    assert no_runs()


def test_unreadable_video(invoke, tmp_path):
    clip = fx.corrupt(tmp_path / "clip.mp4")
    res = invoke(["train-source", "--target", "video", "--data-root", clip, "--iters", 1])
    assert_user_error(res, f"cannot open video {clip}")
    assert no_runs()


# ---- unwritable output directory -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_unwritable_output_directory(invoke, ckpt, data, tmp_path, monkeypatch, kind):
    if kind == "file":
        runs = tmp_path / "runs-is-a-file"
        runs.write_text("")
    else:
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions (the 'file' case covers this path)")
        runs = tmp_path / "read-only"
        runs.mkdir()
        runs.chmod(0o500)
    monkeypatch.setenv("SFDA_RUNS_DIR", str(runs))
    try:
        res = evaluate(invoke, "--checkpoint", ckpt, "--data-root", data)
        assert_user_error(res, "cannot create the output directory", "SFDA_RUNS_DIR")
        res = invoke(["import-pth", _weights(tmp_path), "--arch", "tiny", "--normalization", "imagenet"])
        assert_user_error(res, "cannot create the output directory")
    finally:
        if kind == "read-only":
            runs.chmod(0o700)
    assert kind == "read-only" or runs.read_text() == ""


def _weights(tmp_path: Path) -> Path:
    pth = tmp_path / "w.pth"
    torch.save(build_model("tiny", num_classes=19).state_dict(), pth)
    return pth
