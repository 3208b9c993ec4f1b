"""Issue 17 through the CLI: resume with the run's own settings, run marks (INCOMPLETE first and last,
FAILED), stale temporaries, a cut-short video, the libraries' own stderr silenced, typed options."""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sfda_deploy import config as C
from sfda_deploy import config_build as CB
from sfda_deploy import config_values as CV
from sfda_deploy import runs
from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from tests import fixtures_data as fx
from tests.conftest import assert_user_error
from tests.runtime_data import make_checkpoint
from tests.tiny_data import patch_datasets

REPO = Path(__file__).resolve().parents[1]


def _source(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "src.safetensors", build_model("tiny", num_classes=19),
                           ModelMeta(arch="tiny", input_size=(32, 32)))


def _adapt_args(tmp_path, *extra):
    return ["adapt", "--target", "cityscapes", "--data-root", tmp_path, "--source", _source(tmp_path),
            "--method", "ldbe", "--iters", 2, "--batch", 2, "--crop", 32, 32, "--workers", 0, *extra]


# ---------------------------------------------------------------------------- resume settings
def test_resume_reuses_the_runs_settings_accepts_workers_and_appends_to_the_log(invoke, monkeypatch, tmp_path):
    from sfda_deploy.adapt.methods import METHODS

    patch_datasets(monkeypatch, labelled=False)
    original = METHODS["ldbe"]
    be = original.stages[1]

    def dying(batch, student, teacher, state, cfg):
        if state.iteration == 1:
            raise KeyboardInterrupt  # killed inside stage BE
        return be.step(batch, student, teacher, state, cfg)

    monkeypatch.setitem(METHODS, "ldbe", dataclasses.replace(original, stages=(
        original.stages[0], dataclasses.replace(be, step=dying))))
    assert invoke(_adapt_args(tmp_path, "--name", "r", "--set", "rounds=1", "--set", "checkpoint_every=1")).exit_code == 130
    monkeypatch.setitem(METHODS, "ldbe", original)
    run = tmp_path / "runs" / "adapt" / "r"
    assert runs.run_status(run)[0] == "running" and not (run / "model.safetensors").exists()  # this process's
    saved = CB.read_run_config(C.AdaptConfig, run)
    assert (saved["method"], saved["iters"], saved["options"]) == ("ldbe", 2, {"rounds": 1, "checkpoint_every": 1})
    # the same values given again are fine; a --set option or a flag that differs is refused, naming both
    assert_user_error(invoke(["adapt", "--resume", run, "--set", "rounds=1", "--set", "tau=0.5"]),
                      "--set tau 0.5 differs from 'unset'")
    assert_user_error(invoke(["adapt", "--resume", run, "--set", "rounds=2"]), "--set rounds 2 differs from 1")
    assert_user_error(invoke(["adapt", "--resume", run, "--crop", 64, 64]), "--crop [64, 64] differs from [32, 32]")
    r = invoke(["adapt", "--resume", run, "--method", "ldbe", "--iters", 2, "--set", "rounds=1", "--eval-every", 1])
    assert r.exit_code == 0, r.output
    log = (run / "log.txt").read_text()
    assert "resumed with --eval-every 1 (the run had 0)" in log
    commands = [line for line in log.splitlines() if "command: sfda-deploy adapt" in line]
    assert len(commands) == 2 and f"--resume {run}" in commands[1]
    assert "aborted after" in log and log.count("finished after") == 1 and (run / "model.safetensors").is_file()
    assert not (run / runs.INCOMPLETE).exists() and not (run / runs.FAILED).exists()


def test_compare_resume_refuses_a_differing_flag(invoke, tmp_path):
    root = tmp_path / "runs" / "compare" / "c"
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("methods: atp,ldbe\niters: 6\nseed: 0\n")
    before = sorted(root.rglob("*"))
    assert_user_error(invoke(["compare", "--resume", root, "--seed", 3]), "--seed 3 differs from 0")
    assert sorted(root.rglob("*")) == before


# -------------------------------------------------------------------------------- run marks
def test_a_run_that_fails_is_marked_failed_and_resumes(invoke, monkeypatch, tmp_path):
    from sfda_deploy.adapt.methods import METHODS

    patch_datasets(monkeypatch, labelled=False)
    original = METHODS["ldbe"]
    ld = original.stages[0]

    def nan_step(batch, student, teacher, state, cfg):
        out = ld.step(batch, student, teacher, state, cfg)
        return {**out, "ce": out["ce"] * float("nan")}

    monkeypatch.setitem(METHODS, "ldbe", dataclasses.replace(original, stages=(
        dataclasses.replace(ld, step=nan_step), original.stages[1])))
    r = invoke(_adapt_args(tmp_path, "--name", "f", "--set", "rounds=1"))
    last = r.stderr.strip().splitlines()[-1]  # after the progress bars of the work done
    assert r.exit_code == 2 and last.startswith("error:") and "non-finite at iteration 0" in last, r.stderr
    run = tmp_path / "runs" / "adapt" / "f"
    assert runs.run_status(run) == ("failed", f"error: loss became non-finite at iteration 0 of stage LD "
                                              f"({(run / runs.FAILED).read_text().split('(', 1)[1].strip()}")
    assert not (run / runs.INCOMPLETE).exists() and not (run / "model.safetensors").exists()
    save_checkpoint(run / "stage_LD.safetensors", build_model("tiny", num_classes=19), ModelMeta(arch="tiny"))
    assert_user_error(invoke(["export", run / "stage_LD.safetensors"]), "belongs to a run that failed")
    monkeypatch.setitem(METHODS, "ldbe", original)
    r = invoke(["adapt", "--resume", run])  # --resume recognises it and continues
    assert r.exit_code == 0, r.output
    assert runs.run_status(run) == ("finished", "") and (run / "model.safetensors").is_file()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_interrupted_export_is_marked_and_its_temporaries_are_cleaned_next_time(invoke, tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    # what a kill -9 during export leaves: the INCOMPLETE mark of a dead process and a hidden temporary
    old = tmp_path / "runs" / "export" / "tiny"
    old.mkdir(parents=True)
    (old / runs.INCOMPLETE).write_text(f"pid {_dead_pid()} host {socket.gethostname()} started 2020-01-01\n")
    (old / ".model.onnx.abc123.tmp.onnx").write_bytes(b"\0" * 1000)
    (old / "masks").mkdir()
    (old / "masks" / ".f.png.x.tmp.png").write_bytes(b"\0")
    assert runs.run_status(old)[0] == "interrupted"
    seen = {}
    real = runs.write_json

    def spy(path, obj):  # while the export writes, its directory is marked
        seen[Path(path).name] = (Path(path).parent / runs.INCOMPLETE).is_file()
        return real(path, obj)

    import sfda_deploy.commands.export as export_api

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_api, "write_json", spy)
        r = invoke(["export", ckpt, "--name", "tiny"])
    assert r.exit_code == 0, r.output
    new = tmp_path / "runs" / "export" / "tiny-2"
    assert not any(old.rglob(".*.tmp*")) and (old / runs.INCOMPLETE).is_file()  # cleaned, still marked
    assert seen["report.json"] and not (new / runs.INCOMPLETE).exists() and (new / "model.onnx").is_file()
    (old / "model.onnx").write_bytes(b"partial")  # a file under its real name in an interrupted run
    assert_user_error(invoke(["benchmark", old / "model.onnx"]), "was interrupted")


def test_segment_marks_its_run_first_and_unmarks_it_last(invoke, tmp_path, monkeypatch):
    import sfda_deploy.commands.segment as seg

    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    frames = tmp_path / "frames"
    for i in range(3):
        fx.write_rgb(frames / f"f{i}.png", fx.rgb(i))
    marked = []
    real = seg.SegmentSink.encode

    def spy(self, pred, mask):
        marked.append((self.mask_dir.parent / runs.INCOMPLETE).is_file())
        return real(self, pred, mask)

    monkeypatch.setattr(seg.SegmentSink, "encode", spy)
    r = invoke(["segment", frames, "--model", ckpt, "--save-masks", "--no-save-video"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "segment" / "segment"
    assert marked == [True] * 3 and runs.run_status(run) == ("finished", "")
    assert len(list((run / "masks").glob("*.png"))) == 3


# --------------------------------------------------------------------------------- video / OpenCV
def _cut_short_video(path: Path, frames: int = 30) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path.with_name("whole.avi")), cv2.VideoWriter_fourcc(*"MJPG"), 5, (24, 16))
    for i in range(frames):
        writer.write(np.random.default_rng(i).integers(0, 256, (16, 24, 3), dtype=np.uint8))
    writer.release()
    data = path.with_name("whole.avi").read_bytes()
    path.write_bytes(data[: len(data) * 2 // 5])  # the data stops, the header still announces `frames`
    return path


def test_a_video_cut_short_ends_early_at_frame_n(invoke, tmp_path):
    import cv2

    video = _cut_short_video(tmp_path / "short.avi")
    cap = cv2.VideoCapture(str(video))
    n = 0
    while cap.read()[0]:
        n += 1
    assert 0 < n < 30
    r = invoke(["segment", video, "--model", make_checkpoint(tmp_path / "tiny.safetensors"), "--no-save-video"])
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "runs" / "segment").iterdir()
    s = json.loads((run / "summary.json").read_text())
    assert (s["frames"], s["ended_early_at_frame"], s["unreadable_frames"], s["frames_expected"]) == (n, n, 0, 30)
    assert f"the file ended early at frame {n} (its header announces 30)" in r.output
    assert "unreadable" not in r.output


@pytest.mark.parametrize("bad", ["text_as_mp4", "corrupt_png_folder"])
def test_opencv_and_ffmpeg_print_nothing_of_their_own(tmp_path, bad):
    """A real process (the libraries write to the C-level stderr, which CliRunner does not see)."""
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    if bad == "text_as_mp4":
        source = tmp_path / "notes.mp4"
        source.write_text("not a video\n")
    else:
        source = tmp_path / "frames"
        fx.write_rgb(source / "a.png", fx.rgb(0))
        (source / "a.png").write_bytes((source / "a.png").read_bytes()[:60])  # a truncated PNG
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", SFDA_RUNS_DIR=str(tmp_path / "runs"))
    p = subprocess.run([sys.executable, "-m", "sfda_deploy", "segment", str(source), "--model", str(ckpt)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error:") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "runs").exists()


# -------------------------------------------------------------------------------- typed options
def test_options_are_checked_the_same_from_flags_yaml_and_set(tmp_path):
    from sfda_deploy.adapt.methods import get_method
    from sfda_deploy.errors import SfdaError

    (tmp_path / "c.yaml").write_text("batch: 0\n")
    with pytest.raises(SfdaError, match=r"^--batch 0 is not allowed: use an integer >= 1$"):
        CB.build_config(C.EvaluateConfig, CB.read_yaml(tmp_path / "c.yaml"), {})
    with pytest.raises(SfdaError, match=r"^--batch 0 is not allowed: use an integer >= 1$"):
        CB.build_config(C.EvaluateConfig, {}, {"batch": 0})
    with pytest.raises(SfdaError, match=r"^--set batch 0 is not allowed: use an integer >= 1$"):
        get_method("atp").make_config({"batch": 0})
    # numbers YAML reads as text ("1e-3") are numbers for a float option; ints widen to floats
    assert get_method("atp").make_config({"lr": "1e-3", "tau_n": 1}).lr == 0.001
    assert isinstance(get_method("atp").make_config({"tau_n": 1}).tau_n, float)
    assert CB.build_config(C.ExportConfig, {"imgsz": [32, 64]}, {}).imgsz == (32, 64)
    assert np.isclose(CB.build_config(C.SegmentConfig, {}, {"alpha": 1}).alpha, 1.0)
    # the choices named in one place match the runtime's own lists
    from sfda_deploy.onnxrt import GRAPH_OPTIMIZATIONS
    from sfda_deploy.runtime.backends import BACKEND_KINDS

    assert CV.CHOICES["ort_opt"] == GRAPH_OPTIMIZATIONS
    assert set(CV.CHOICES["backend"]) == {"auto", *BACKEND_KINDS}


def test_train_source_called_as_a_library_function_finishes_its_run(tmp_path):
    # Scripts (the benchmark re-base) call run_train_source directly; a later process must load its model.
    from sfda_deploy.commands.adapt import run_train_source
    from sfda_deploy.config import TrainSourceConfig
    from sfda_deploy.runs import check_finished, run_status

    fx.write_cityscapes(tmp_path / "cs", "train", n=2)
    run = run_train_source(TrainSourceConfig(target="cityscapes", data_root=str(tmp_path / "cs"), arch="tiny",
                                             iters=1, batch=1, crop=(16, 16), eval_every=0, workers=0, amp=False,
                                             name="lib"))
    assert run_status(run)[0] == "finished"
    check_finished(run / "model.safetensors")  # no INCOMPLETE left: loads in any later process


def test_resuming_a_finished_run_says_there_is_nothing_to_resume(invoke, tmp_path):
    fx.write_cityscapes(tmp_path, "train", n=4)
    r = invoke(_adapt_args(tmp_path))
    assert r.exit_code == 0, r.output
    run = next((tmp_path / "runs" / "adapt").iterdir())
    assert_user_error(invoke(["adapt", "--resume", run]), "has finished", "nothing to resume", "model.safetensors")
