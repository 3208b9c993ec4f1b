"""``generate-data --drive``: the frame plan, a camera that moves through one street, the layout, bad flags."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from sfda_deploy.data.synth_drive import DrivePlan, generate_drive, render_frame
from sfda_deploy.data.synth_scene import render_scene
from tests.conftest import assert_user_error

PLAN = DrivePlan(("real", "fog"), rounds=2, condition_frames=3, scene_frames=4, size=(32, 64), seed=0)


def test_frame_plan_walks_conditions_streets_and_rounds():
    assert (PLAN.frames_per_round, PLAN.frames) == (6, 12)
    assert [PLAN.frame(i) for i in (0, 2, 3, 4, 5, 6, 11)] == [
        (1, "real", 0, 0.0), (1, "real", 0, 1.0), (1, "fog", 0, 1.5), (1, "fog", 1, 0.0), (1, "fog", 1, 0.5),
        (2, "real", 0, 0.0), (2, "fog", 1, 0.5)]


def test_the_camera_moves_forward_through_one_street():
    plan = DrivePlan(("real",), rounds=1, condition_frames=12, scene_frames=12, size=(64, 128), speed=1.0)
    labels = [render_frame(plan, i)[1] for i in range(12)]
    # Consecutive frames (1 m apart) of a street agree on most pixels, yet the view does change: 6 m on,
    # frame 0 agrees less with the view than any step does (the camera is not standing still).
    steps = [float((labels[k] == labels[k + 1]).mean()) for k in range(11)]
    assert min(steps) > 0.8 and np.mean(steps) > 0.85, steps
    assert float((labels[0] == labels[6]).mean()) < min(steps)
    # A still image of another street agrees far less with frame 0 than the next frame does.
    other = render_scene(np.random.default_rng([5, 7, 1]), 64, 128)["label"]
    assert float((labels[0] == other).mean()) < steps[0] - 0.3
    # The same frame renders the same (the rounds replay the same drive).
    assert np.array_equal(render_frame(plan, 3)[0], render_frame(plan, 3)[0])


def test_drive_layout_labels_and_conditions(tmp_path):
    out = generate_drive(tmp_path / "drive", PLAN, progress=False)
    cap = cv2.VideoCapture(str(out / "drive.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (32, 64, 3)
    labels = sorted(p.name for p in (out / "labels").glob("*.png"))
    assert labels == [f"frame_{i:06d}.png" for i in range(12)]
    assert np.array_equal(cv2.imread(str(out / "labels" / "frame_000007.png"), cv2.IMREAD_UNCHANGED),
                          render_frame(PLAN, 7)[1])
    with open(out / "labels" / "conditions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["frame"], r["round"], r["condition"]) for r in rows[2:5]] == [
        ("frame_000002", "1", "real"), ("frame_000003", "1", "fog"), ("frame_000004", "1", "fog")]
    assert json.loads((out / "drive.json").read_text())["conditions"] == ["real", "fog"]
    assert [p.name for p in tmp_path.iterdir()] == ["drive"]  # no temporary folder left


@pytest.mark.parametrize("args, fragments", [
    (["--conditions", "real,fgo"], ["unknown condition 'fgo'", "fog"]),
    (["--rounds", "0"], ["--rounds must be >= 1"]),
    (["--condition-frames", "-1"], ["--condition-frames -1 is not allowed: use an integer >= 1"]),
    (["--size", "16", "16"], ["too small"]),
])
def test_bad_drive_flags(invoke, tmp_path, args, fragments):
    result = invoke(["generate-data", "--drive", tmp_path / "d", *args])
    assert_user_error(result, *fragments)
    assert not (tmp_path / "d").exists()


def test_drive_refuses_a_non_empty_folder(invoke, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("x")
    assert_user_error(invoke(["generate-data", "--drive", tmp_path / "d"]), "already exists and is not empty")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.txt"]
