"""``segment --adapt`` / ``--labels`` / ``--save-adapted`` on a tiny drive through the CLI, and their bad inputs."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from sfda_deploy.checkpoint import load_model, save_checkpoint
from sfda_deploy.classes import get_class_set
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.metrics import ConfusionMatrix
from sfda_deploy.models import MODELS
from sfda_deploy.models.base import SegmentationModel
from tests.conftest import assert_user_error, copy_of
from tests.runtime_data import make_onnx


@pytest.fixture
def drive(tmp_path, session_files):
    return copy_of(session_files.drive, tmp_path)


@pytest.fixture
def ckpt(tmp_path, session_files):
    return copy_of(session_files.checkpoint, tmp_path)


def _runs(tmp_path):
    root = tmp_path / "runs" / "segment"
    return sorted(root.iterdir()) if root.exists() else []


def test_adapt_on_a_drive_counts_scores_and_saves(invoke, tmp_path, drive, ckpt):
    result = invoke(["segment", drive / "drive.mp4", "--model", ckpt, "--adapt", "anchored", "--adapt-every", "2",
                     "--labels", drive / "labels", "--save-adapted", "--save-masks", "--no-save-video"])
    assert result.exit_code == 0, result.output
    (run,) = _runs(tmp_path)
    s = json.loads((run / "summary.json").read_text())
    a = s["adaptation"]
    assert (a["method"], a["every"], a["updates"], a["reset_enabled"]) == ("anchored", 2, 6, True)
    assert a["resets"] == len(a["reset_events"]) and a["fps_with_adaptation"] > 0
    assert a["fps_without_adaptation_est"] >= a["fps_with_adaptation"]
    scores = s["scores"]
    assert scores["frames"] == 12 and set(scores["per_condition"]) == {"real", "night"}
    assert set(scores["per_round"]) == {"1", "2"} and len(scores["per_round_condition"]) == 4
    # The scorer's mIoU is the one of the saved masks against the labels.
    cs = get_class_set("cityscapes19")
    cm = ConfusionMatrix(19)
    for i in range(12):
        pred = cv2.imread(str(run / "masks" / f"frame_{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        label = cs.labelid_lut()[cv2.imread(str(drive / "labels" / f"frame_{i:06d}.png"), cv2.IMREAD_UNCHANGED)]
        cm.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(label.astype(np.int64)))
    assert scores["overall"]["miou"] == cm.result(cs.names)["miou"]
    assert f"mIoU {scores['overall']['miou']:.2f} over 12 labelled frames" in result.output
    assert "adapt anchored: 6 updates" in result.output
    # The adapted checkpoint loads, with the input's metadata (plus where it came from), and exports.
    model, meta = load_model(run / "adapted.safetensors", "cpu")
    _, source_meta = load_model(ckpt, "cpu")
    assert meta.replace(provenance=()) == source_meta.replace(provenance=())
    assert meta.provenance[-1]["method"] == "anchored" and meta.provenance[-1]["updates"] == 6
    exported = invoke(["export", run / "adapted.safetensors", "--no-trt", "--verify-data", drive / "drive.mp4"])
    assert exported.exit_code == 0, exported.output


def _tent_run(invoke, tmp_path, drive, ckpt, lr: str, every: int):
    """``segment --adapt tent --adapt-set lr=LR --adapt-every EVERY`` on the drive: (result, run, adaptation)."""
    result = invoke(["segment", drive / "drive.mp4", "--model", ckpt, "--adapt", "tent", "--adapt-every", every,
                     "--adapt-set", f"lr={lr}", "--no-save-video"])
    assert result.exit_code == 0, result.output
    (run,) = _runs(tmp_path)
    return result, run, json.loads((run / "summary.json").read_text())["adaptation"]


def test_the_help_example_runs(invoke, tmp_path, drive, ckpt):
    # --adapt-set's own example: YAML reads 1e-4 as text, the option path makes it the float lr.
    _, _, a = _tent_run(invoke, tmp_path, drive, ckpt, "1e-4", 6)
    assert a["options"]["lr"] == 1e-4 and a["updates"] >= 1


def test_a_forced_collapse_is_reset_with_one_log_line_each(invoke, tmp_path, drive, ckpt):
    # lr 0.5 wrecks the tiny model at every update: each one must be caught and undone.
    result, run, a = _tent_run(invoke, tmp_path, drive, ckpt, "0.5", 4)
    assert a["updates"] == 3 and a["resets"] == 3
    lines = [line for line in result.output.splitlines() if "reset #" in line]
    assert len(lines) == 3 and "at frame 3 (update 1)" in lines[0]
    assert sum("reset #" in line for line in (run / "log.txt").read_text().splitlines()) == 3


class _NoNorm(SegmentationModel):
    output_stride = 1

    def __init__(self, num_classes: int = 19, align_corners: bool = False):
        super().__init__(num_classes, align_corners)
        self.feature_channels = 3
        self.classifier = nn.Conv2d(3, num_classes, 1)

    def features(self, x):
        return x

    def head(self, features):
        return self.classifier(features)


def _expect_nothing_written(result, tmp_path, *fragments):
    assert_user_error(result, *fragments)
    assert _runs(tmp_path) == []


@pytest.mark.parametrize("args, fragments", [
    (["--adapt-every", "0", "--adapt", "tent"], ["--adapt-every 0 is not allowed: use an integer >= 1"]),
    (["--adapt", "tnet"], ["unknown --adapt method 'tnet'", "tent"]),
    (["--save-adapted"], ["--save-adapted saves what --adapt changed"]),
    (["--adapt-set", "lr=1"], ["--adapt-set sets a hyper-parameter of --adapt"]),
    (["--adapt", "cotta", "--adapt-set", "lrr=1"], ["unknown option 'lrr' for --adapt cotta", "lr"]),
    # every value through config_values: type, range, choice (YAML reads "abc" and "1e-4" as text)
    (["--adapt", "tent", "--adapt-set", "bn_momentum=5"], ["--adapt-set bn_momentum 5.0 is not allowed",
                                                           "a number from 0 to 1"]),
    (["--adapt", "tent", "--adapt-set", "bn_momentum=abc"], ["--adapt-set bn_momentum 'abc' is not allowed",
                                                             "use a number"]),
    (["--adapt", "anchored", "--adapt-set", "batch=0"], ["--adapt-set batch 0 is not allowed", "integer >= 1"]),
    (["--adapt", "cotta", "--adapt-set", "scales=[1.0,-0.5]"], ["--adapt-set scales [1.0, -0.5]", "numbers > 0"]),
    (["--adapt", "cotta", "--adapt-set", "flip=sometimes"], ["--adapt-set flip 'sometimes'", "true or false"]),
])
def test_bad_adapt_flags(invoke, tmp_path, drive, ckpt, args, fragments):
    _expect_nothing_written(invoke(["segment", drive / "drive.mp4", "--model", ckpt, *args]), tmp_path, *fragments)


def test_adapt_refuses_onnx(invoke, tmp_path, drive):
    model = make_onnx(tmp_path / "tiny.onnx")
    _expect_nothing_written(invoke(["segment", drive / "drive.mp4", "--model", model, "--adapt", "tent"]), tmp_path,
                            "onnxruntime backend cannot", "pass the .safetensors checkpoint")


def test_tent_refuses_a_model_without_batchnorm(invoke, tmp_path, drive, monkeypatch):
    monkeypatch.setitem(MODELS, "nonorm", _NoNorm)
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "nonorm.safetensors", _NoNorm(), ModelMeta(arch="nonorm", input_size=(32, 64)))
    _expect_nothing_written(invoke(["segment", drive / "drive.mp4", "--model", path, "--adapt", "tent"]), tmp_path,
                            "--adapt tent adapts normalisation layers (BatchNorm, LayerNorm) but the model has none")


def test_labels_must_match_the_video(invoke, tmp_path, drive, ckpt):
    labels = drive / "labels"
    short = tmp_path / "short"
    shutil.copytree(labels, short)
    (short / "frame_000011.png").unlink()
    _expect_nothing_written(invoke(["segment", drive / "drive.mp4", "--model", ckpt, "--labels", short]), tmp_path,
                            "holds 11 label PNGs but the video has 12 frames")
    renamed = tmp_path / "renamed"
    shutil.copytree(labels, renamed)
    (renamed / "frame_000004.png").rename(renamed / "img_4.png")
    _expect_nothing_written(invoke(["segment", drive / "drive.mp4", "--model", ckpt, "--labels", renamed]), tmp_path,
                            "has no frame_000004.png")
    _expect_nothing_written(invoke(["segment", drive / "drive.mp4", "--model", ckpt, "--labels", tmp_path / "nope"]),
                            tmp_path, "is not a folder")
