"""Issue 30, a user's first hour, second pass: the card's commands chain, evaluate runs any deployed file at
the model's own size, every summary and plot names what shipped, the plots read (titles, legends, axes)."""
from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from sfda_deploy.adapt import shipped as S
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import set_reporter
from sfda_deploy.run_folders import latest_run, model_in_run
from sfda_deploy.runs import INCOMPLETE
from tests import fixtures_data as fx
from tests.conftest import assert_user_error
from tests.runtime_data import make_checkpoint, make_images, make_onnx

ROOT = Path(__file__).resolve().parents[1]


def _figures(monkeypatch, module) -> list:
    """The figures ``module`` saves, kept open for their artists to be read (``save_figure`` only records)."""
    figures = []
    monkeypatch.setattr(module, "save_figure", lambda fig, path, dpi=100: figures.append(fig))
    return figures


# ---- item 1: evaluate runs a model at the size it records; --imgsz overrides; a large mismatch is said ----
def test_size_mismatch_note_known_answers():
    from sfda_deploy.runtime.io import size_mismatch_note

    assert size_mismatch_note((128, 256), (128, 256)) is None
    assert size_mismatch_note((160, 320), (128, 256)) is None  # 1.25x per side: close enough
    note = size_mismatch_note((256, 512), (128, 256))  # the case: 2x per side
    assert note.startswith("the images are 256x512 and the model runs at 128x256 (the size it records")
    assert "(--imgsz; it records 128x256)" in size_mismatch_note((256, 512), (64, 128), (128, 256))
    assert size_mismatch_note((128, 128), (128, 256)) is not None  # the aspect changes by half


def test_evaluate_runs_the_recorded_size_and_says_a_large_mismatch_once(invoke, tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")  # records 32x64
    data = fx.write_cityscapes(tmp_path / "cs", n=2, size=(64, 128))
    result = invoke(["evaluate", "--checkpoint", ckpt, "--data-root", data, "--name", "own"])
    assert result.exit_code == 0, result.output
    assert result.output.count("note: the images are 64x128 and the model runs at 32x64") == 1
    metrics = json.loads((tmp_path / "runs" / "evaluate" / "own" / "metrics.json").read_text())
    assert metrics["model"]["input_size"] == [32, 64] and metrics["model"]["backend"] == "torch"
    result = invoke(["evaluate", "--checkpoint", ckpt, "--data-root", data, "--imgsz", 64, 128, "--name", "theirs"])
    assert result.exit_code == 0 and "note:" not in result.output
    metrics = json.loads((tmp_path / "runs" / "evaluate" / "theirs" / "metrics.json").read_text())
    assert metrics["model"]["input_size"] == [64, 128]


# ---- item 7: evaluate takes every deployed file through segment's backends, with the same table ----------
@pytest.mark.slow  # an export with its fp16 and INT8 files (seconds)
def test_evaluate_scores_every_exported_file_with_the_same_table(invoke, tmp_path):
    from tests.test_export import SIZE, _write_frames

    ckpt = make_checkpoint(tmp_path / "adapted" / "model.safetensors", input_size=SIZE)
    calib = _write_frames(tmp_path / "calib", 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "calibrating INT8 on 4 frames"
        exported = invoke(["export", ckpt, "--fp16", "--int8-cpu", "--calib-data", calib, "--calib-count", 4,
                           "--name", "x"])
    assert exported.exit_code == 0, exported.output
    run = tmp_path / "runs" / "export" / "x"
    data = fx.write_cityscapes(tmp_path / "cs", n=3, size=SIZE)
    scores = {}
    for name, model in (("ckpt", ckpt), ("fp32", run / "model.onnx"), ("fp16", run / "model_fp16.onnx"),
                        ("int8", run / "model_int8_cpu.onnx"), ("folder", run)):
        result = invoke(["evaluate", "--checkpoint", model, "--data-root", data, "--name", name])
        assert result.exit_code == 0, result.output
        assert re.search(r"^class +val$", result.output, re.M) and "mIoU" in result.output
        metrics = json.loads((tmp_path / "runs" / "evaluate" / name / "metrics.json").read_text())
        assert metrics["images"] == 3 and len(metrics["iou"]) == 19
        scores[name] = metrics["miou"]
    assert json.loads((tmp_path / "runs" / "evaluate" / "fp32" / "metrics.json").read_text())["model"]["backend"] \
        == "onnxruntime"
    assert scores["fp32"] == pytest.approx(scores["ckpt"], abs=0.01) and scores["folder"] == scores["fp32"]
    assert scores["fp16"] == pytest.approx(scores["ckpt"], abs=1.0)


def test_labels_at_resizes_logits_then_takes_the_argmax():
    from sfda_deploy.runtime.evaluation import labels_at

    # class 1: 1 on the left column, 0 on the right; class 0: 0.7 everywhere. Bilinear to 4 columns samples the
    # source at x = 0, 1/3, 2/3, 1 with align_corners (class 1: 1, 0.67, 0.33, 0) and at x = 0, 0.25, 0.75, 1
    # without (1, 0.75, 0.25, 0): class 1 wins where its value tops 0.7
    logits = np.zeros((3, 2, 2), np.float32)
    logits[0] = 0.7
    logits[1, :, 0] = 1.0
    assert labels_at(logits, (4, 4), align_corners=True).tolist() == [[1, 0, 0, 0]] * 4
    assert labels_at(logits, (4, 4), align_corners=False).tolist() == [[1, 1, 0, 0]] * 4
    assert labels_at(np.array([[2, 5]], np.uint8), (2, 4), False).tolist() == [[2, 2, 5, 5]] * 2  # mask: nearest


# ---- item 3: the card's chain with no paths; run folders; adapt's resume file ------------------------------
def _adapt_run(root: Path, name: str, finished: bool = True) -> Path:
    run = root / "adapt" / name
    make_checkpoint(run / "model.safetensors")
    if not finished:
        (run / INCOMPLETE).write_text(f"pid 1 host {os.uname().nodename}x started\n")  # another host: alive
    return run


def test_latest_run_is_the_last_finished_one_and_includes_the_demos():
    root = Path(os.environ["SFDA_RUNS_DIR"])
    assert latest_run("adapt") is None
    old = _adapt_run(root, "old")
    _adapt_run(root, "busy", finished=False)
    assert latest_run("adapt") == old
    time.sleep(0.02)
    demo = root / "demo" / "demo" / "adapt"
    make_checkpoint(demo / "model.safetensors")
    assert latest_run("adapt") == demo
    assert model_in_run(old) == old / "model.safetensors"
    with pytest.raises(SfdaError, match="is a folder without a model file"):
        model_in_run(root)


def test_export_without_a_checkpoint_takes_the_latest_adapt_run_and_says_which(invoke, tmp_path):
    assert_user_error(invoke(["export", "--trt"]), "no finished adapt run under", "sfda-deploy export runs/adapt/NAME")
    run = _adapt_run(tmp_path / "runs", "atp")
    result = invoke(["export", "--trt"])
    assert result.exit_code == 0, result.output
    assert f"no checkpoint given: the latest adapt run's model, {run / 'model.safetensors'} from {run} (finished" \
        in result.output
    assert (tmp_path / "runs" / "export" / "atp" / "model.onnx").is_file()
    # no GPU here: the hint builds the engine from that ONNX elsewhere
    assert f"run 'sfda-deploy export {tmp_path / 'runs' / 'export' / 'atp' / 'model.onnx'} --trt'" in result.output


def test_segment_without_model_takes_the_latest_export_then_adapt_run(invoke, tmp_path):
    make_images(tmp_path / "frames", n=1, size=(32, 64))
    adapted = _adapt_run(tmp_path / "runs", "atp")
    result = invoke(["segment", tmp_path / "frames", "--threads", 1, "--name", "a"])
    assert result.exit_code == 0, result.output
    assert f"no --model and no export yet: the latest adapt run's model, {adapted / 'model.safetensors'}" \
        in result.output
    assert json.loads((tmp_path / "runs" / "segment" / "a" / "summary.json").read_text())["backend"] == "torch"
    export = tmp_path / "runs" / "export" / "atp"
    export.mkdir(parents=True)
    make_onnx(export / "model.onnx")
    result = invoke(["segment", tmp_path / "frames", "--threads", 1, "--name", "b"])
    assert result.exit_code == 0, result.output
    assert f"no --model: the latest export, {export / 'model.onnx'} from {export}" in result.output
    summary = json.loads((tmp_path / "runs" / "segment" / "b" / "summary.json").read_text())
    assert summary["backend"] == "onnxruntime" and summary["model"] == str(export / "model.onnx")
    # --adapt needs torch: the latest adapt run, not the export
    result = invoke(["segment", tmp_path / "frames", "--threads", 1, "--adapt", "bnstats", "--name", "c"])
    assert result.exit_code == 0 and "the latest adapt run's model" in result.output


def test_run_folders_are_accepted_and_last_pt_points_at_the_model(invoke, tmp_path):
    run = _adapt_run(tmp_path / "runs", "atp")
    make_images(tmp_path / "frames", n=1, size=(32, 64))
    result = invoke(["segment", tmp_path / "frames", "--model", run, "--threads", 1])
    assert result.exit_code == 0, result.output
    assert f"model: {run} (tiny, cityscapes19)" in result.output
    (run / "last.pt").write_bytes(b"state")
    for args in (["segment", tmp_path / "frames", "--model", run / "last.pt"], ["export", run / "last.pt"],
                 ["evaluate", "--checkpoint", run / "last.pt", "--data-root", tmp_path]):
        assert_user_error(invoke(args), f"{run / 'last.pt'} is the run's resume state (for --resume {run}), not a "
                          f"model: pass {run / 'model.safetensors'} (the model the run shipped)")


# ---- item 9: dynamic engine settings travel with the hint; a dynamic ONNX takes --trt --dynamic ----------
def test_engine_flags_and_the_build_elsewhere_hint_keep_the_dynamic_profile():
    from sfda_deploy.commands.export import build_elsewhere, engine_flags

    settings = {"dynamic": True, "batch": 1, "max_batch": 4, "max_imgsz": [1024, 2048], "workspace": 4.0}
    assert engine_flags(settings) == "--trt --dynamic --max-batch 4 --max-imgsz 1024 2048"
    assert engine_flags({"dynamic": False, "max_batch": None, "workspace": 8.0}) == "--trt --workspace 8"
    line = build_elsewhere("runs/export/x/model.onnx", "no CUDA GPU", settings)
    assert "'sfda-deploy export runs/export/x/model.onnx --trt --dynamic --max-batch 4 --max-imgsz 1024 2048'" in line


def test_a_dynamic_onnx_accepts_trt_dynamic_and_a_static_one_says_why_not(invoke, tmp_path):
    dynamic, static = make_onnx(tmp_path / "dyn.onnx"), make_onnx(tmp_path / "static.onnx", dynamic=False)
    result = invoke(["export", dynamic, "--trt", "--dynamic", "--max-batch", 4])
    assert result.exit_code == 2 and "fixed inside an exported ONNX" not in result.stderr  # gets to the GPU check
    assert_user_error(invoke(["export", static, "--trt", "--dynamic"]), "--dynamic needs a dynamic ONNX",
                      "was exported static")


# ---- item 4: every summary names what shipped --------------------------------------------------------------
def _selection(kind: str) -> dict:
    shipped = {"checkpoint": {"stage": "T", "iter": 200}, "runner-up": {"stage": "T", "iter": 150},
               "adabn": {"stage": "adabn", "iter": 0, "baseline": True, "reference": False},
               "source": {"stage": "source", "iter": 0, "baseline": False, "reference": True}}[kind]
    return {"shipped": shipped, "fell_back": kind != "checkpoint", "reason": "why" if kind != "checkpoint" else None}


def test_shipped_labels_have_one_meaning_of_fallback():
    assert [S.shipped_label(_selection(k)) for k in ("checkpoint", "runner-up", "adabn", "source")] == \
        ["T/200", "T/150 (top rejected)", "AdaBN (fallback)", "source (fallback)"]
    assert [S.is_fallback(_selection(k)) for k in ("checkpoint", "runner-up", "adabn", "source")] == \
        [False, False, True, True]
    assert S.shipped_label(None) == "last" and S.shipped_words(_selection("adabn")).startswith("the AdaBN baseline")


def test_progression_names_source_adabn_and_what_shipped():
    assert S.progression("ATP", 34.1, 52.1, 52.9, _selection("checkpoint")) == \
        "source-only 34.1 → AdaBN 52.1 → ATP 52.9 (shipped T/200, +0.8 over AdaBN)"
    assert S.progression("ATP", 34.1, 52.1, 52.1, _selection("adabn")) == \
        "source-only 34.1 → AdaBN 52.1 → ATP: AdaBN shipped, 52.1 (fallback: why)"
    assert S.progression("atp", 30.0, None, 31.0, _selection("runner-up")) == \
        "source-only 30.0 → atp 31.0 (shipped T/150 (top rejected), +1.0 over the source; why)"


def test_iou_before_after_names_the_model_that_shipped(monkeypatch, tmp_path):
    from sfda_deploy import report as R
    from sfda_deploy.adapt.plots import plot_iou_chart

    figures = _figures(monkeypatch, R)
    result = {"miou": 40.0, "iou": {"road": 80.0, "car": 0.0}, "confusion": [[8, 0], [0, 1]], "unassigned": [0, 0]}
    plot_iou_chart(tmp_path / "x.png", result, result, "src before vs after atp\nshipped: the AdaBN baseline",
                   after_label="after: the AdaBN baseline (fallback)")
    ax = figures[0].axes[0]
    assert "shipped: the AdaBN baseline" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == \
        ["before: the source (40.0 mIoU)", "after: the AdaBN baseline (fallback) (40.0 mIoU)"]


def test_compare_plot_has_a_title_and_marks_the_fallbacks(monkeypatch, tmp_path):
    from sfda_deploy.adapt import plots as AR
    from sfda_deploy.commands import compare as C

    figures = _figures(monkeypatch, AR)
    iou = {"road": 50.0}
    rows = {"adabn": {"miou": 35.0, "iou": iou, "selected": "last", "fallback": False},
            "atp": {"miou": 35.0, "iou": iou, "selected": "AdaBN (fallback)", "fallback": True},
            "ldbe": {"miou": 38.0, "iou": iou, "selected": "LD/2", "fallback": False}}
    C.plot_compare(tmp_path / "c.png", rows, {"miou": 30.0, "iou": iou}, "cityscapes DATA: shipped model per method")
    top, bottom = figures[0].axes
    assert top.get_title() == "cityscapes DATA: shipped model per method"
    hatches = [bar.get_hatch() for bar in top.patches]
    assert hatches == ["", "", AR.FALLBACK_HATCH, ""]  # source-only, adabn, atp (fallback), ldbe
    labels = [t.get_text() for t in top.texts]
    assert "35.0\n= AdaBN (fallback)" in labels and "38.0" in labels
    assert "fallback:" in top.get_legend().get_texts()[0].get_text()
    assert "atp (fallback)" in [t.get_text() for t in bottom.get_legend().get_texts()]


def test_demo_closing_note_lists_selection_png_and_runs_as_printed(tmp_path):
    from sfda_deploy.commands.demo import closing_note

    run = tmp_path / "demo"
    for f in ("adapt/losses.png", "adapt/iou_before_after.png", "adapt/selection.png", "real_val.mp4"):
        (run / f).parent.mkdir(parents=True, exist_ok=True)
        (run / f).write_bytes(b"x")
    note = closing_note(run, run / "data", run / "adapt/model.safetensors", run / "export/model.onnx",
                        run / "segment", "real", command=".venv/bin/sfda-deploy")
    assert str(run / "adapt" / "selection.png") in note
    nexts = note[note.index("next"):].splitlines()[1:]
    assert nexts and all(line.startswith("  .venv/bin/sfda-deploy ") for line in nexts)
    assert f"segment {run / 'real_val.mp4'} --model" in note and "YOUR_VIDEO" not in note


def test_command_name_is_what_the_shell_reaches(monkeypatch, tmp_path):
    import shutil
    import sys

    from sfda_deploy.commands.demo import command_name

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sfda-deploy").write_text("#!")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setattr(shutil, "which", lambda name: str(tmp_path / "bin" / name))
    assert command_name() == "sfda-deploy"  # on PATH: activated
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.chdir(tmp_path)
    assert command_name() == os.path.join("bin", "sfda-deploy")  # not activated: the path, as typed from here


# ---- items 5 and 6: selection.png, confusion matrices and the loss panels read ------------------------------
def _record() -> dict:
    def point(stage, it, im, snd, collapse=None, miou=None):
        return {"stage": stage, "iter": it, "scores": {"im": im, "snd": snd, "mix": 0.0}, "miou": miou,
                "collapse": collapse}

    points = [point("A", 25, 1.0, 5.0, miou=40.0), point("A", 50, 1.2, 5.0, "class bus vanished", miou=41.0),
              point("T", 25, 1.3, 4.0, miou=39.0), point("T", 50, 1.4, 5.0, miou=42.0)]
    return {"select_by": "im", "points": points, "fallback": True, "floor_by": ["snd"],
            "floor_tolerance": 0.03, "floor_sticky": True,
            "reference": {"stage": "source", "iter": 0, "scores": {"im": 0.9, "snd": 5.1, "mix": 0.0}, "miou": 30.0},
            "baseline": {"stage": "adabn", "iter": 0, "scores": {"im": 1.05, "snd": 5.0, "mix": 0.0}, "miou": 38.0},
            "shipped": points[0], "fell_back": True,
            "reason": "the top-scored checkpoint (T iteration 50) fell more than 3% below the AdaBN baseline's snd, "
                      "or came after a checkpoint that did; shipped the best one left, a long reason for the title"}


def test_point_rejections_read_the_rule_without_changing_it():
    assert S.point_rejections(_record()) == [None, "collapse", "below floor", "after a floor breach"]
    assert S.point_rejections({**_record(), "floor_sticky": False}) == [None, "collapse", "below floor", None]
    assert S.point_rejections({**_record(), "fallback": False}) == [None] * 4


def test_selection_plot_reads(monkeypatch, tmp_path):
    from sfda_deploy.adapt import plots as AR

    figures = _figures(monkeypatch, AR)
    AR.plot_selection(tmp_path / "s.png", _record())
    fig = figures[0]
    ax, ax2 = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for want in ("im of each checkpoint (label-free)", "source im", "AdaBN im", "not shippable: collapse",
                 "not shippable: below floor", "not shippable: after a floor breach", "shipped", "source mIoU",
                 "AdaBN mIoU", "mIoU of each checkpoint (labels, not used to choose)"):
        assert want in labels, want
    lines = [line for a in (ax, ax2) for line in a.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == len(labels)  # every line drawn has its legend entry
    assert ax.get_ylabel().startswith("im: information maximisation")
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    fig.canvas.draw()
    box, title = fig.bbox, ax.title.get_window_extent()
    assert box.x0 <= title.x0 and title.x1 <= box.x1 and "\n" in ax.get_title()  # wrapped, inside the figure


def test_confusion_matrix_is_titled_and_readable(monkeypatch, tmp_path):
    from sfda_deploy import report as R

    figures = _figures(monkeypatch, R)
    result = {"miou": 55.5, "confusion": [[9, 1], [2, 8]], "unassigned": [0, 0]}
    R.plot_confusion(tmp_path / "c.png", result, ["road", "car"], title="ATP (real)\non the real style's val split")
    ax = figures[0].axes[0]
    assert ax.get_title() == "ATP (real)\non the real style's val split\nconfusion (% of each ground-truth class), " \
        "mIoU 55.5"
    assert [t.get_text() for t in ax.texts] == ["90", "10", "20", "80"] and min(t.get_fontsize() for t in ax.texts) >= 7


def test_loss_panels_show_tiny_terms_in_readable_units_with_their_total(monkeypatch, tmp_path):
    from sfda_deploy.adapt import plots as AR

    assert AR.loss_scale(np.array([2e-5, -5.5e-5])) == pytest.approx(1e-5)
    assert AR.loss_scale(np.array([0.3, 0.02])) == 1.0 and AR.loss_scale(np.array([np.nan])) == 1.0
    figures = _figures(monkeypatch, AR)
    history = [{"stage": "A", "iter": i, "entropy": 2e-5, "diversity": -5e-5} for i in range(3)]
    AR.plot_losses(tmp_path / "l.png", history)
    ax = figures[0].axes[0]
    assert ax.get_ylabel() == "loss (×1e-05)"
    lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
    assert list(lines["total (minimised)"]) == pytest.approx([-3.0] * 3)
    assert list(lines["entropy of the predictions [entropy]"]) == pytest.approx([2.0] * 3)


# ---- item 8: messages that point the right way ----------------------------------------------------------
def test_method_case_gets_a_suggestion_and_distill_is_explained(invoke, tmp_path):
    result = invoke(["adapt", "--data-root", tmp_path, "--source", make_checkpoint(tmp_path / "m.safetensors"),
                     "--method", "ATP"])
    assert_user_error(result, "unknown method 'ATP' (did you mean 'atp'?)")
    words = " ".join(invoke(["adapt", "--help"]).output.split())
    assert "distill: only stage D, a student of --arch distilled from a black-box .onnx --source's predictions" in words


# ---- item 10: warning noise ----------------------------------------------------------------------------------
def test_fp16_truncation_warnings_become_one_line(monkeypatch, tmp_path):
    import onnx
    from onnx import numpy_helper

    from sfda_deploy.export.onnx import convert_fp16
    from sfda_deploy.metadata import ModelMeta

    src = make_onnx(tmp_path / "m.onnx", dynamic=False)
    proto = onnx.load(str(src))
    floats = [i for i in proto.graph.initializer if numpy_helper.to_array(i).dtype == np.float32]
    for init in floats[:2]:  # values below fp16's smallest positive number: the converter warns per value
        array = numpy_helper.to_array(init).copy()
        array.flat[0] = 1e-9
        init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(proto, str(src))
    lines = []
    previous = set_reporter(lambda line, err: lines.append(line))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            convert_fp16(src, tmp_path / "h.onnx", ModelMeta(arch="tiny"))
    finally:
        set_reporter(previous)
    assert not [w for w in caught if "truncated" in str(w.message)]
    assert len(lines) == 1 and re.match(r"fp16: \d+ weight values? beyond fp16's range clamped to its nearest", lines[0])


def test_onnxruntime_axis_warnings_are_dropped_and_others_kept():
    from sfda_deploy.export.cpu_int8 import quiet_axis_warnings

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    root, handler = logging.getLogger(), Keep()
    root.addHandler(handler)
    try:
        with quiet_axis_warnings():
            logging.warning("Axis 1 is out-of-range for weight 'w' with rank 1")
            logging.warning("something else")
        logging.warning("Axis 2 is out-of-range for weight 'w' with rank 1")  # outside: untouched
    finally:
        root.removeHandler(handler)
    assert seen == ["something else", "Axis 2 is out-of-range for weight 'w' with rank 1"]


def test_run_it_names_the_fastest_file_for_where_it_runs():
    from sfda_deploy.commands.export import file_to_run

    files = {"onnx": "m.onnx", "fp16_onnx": "m16.onnx", "int8_cpu_onnx": "m8.onnx"}
    assert file_to_run(files, gpu=False) == ("m8.onnx", "the fastest on a CPU")
    assert file_to_run({"onnx": "m.onnx", "fp16_onnx": "m16.onnx"}, gpu=False)[0] == "m.onnx"
    assert "fp32 runs faster than m16.onnx" in file_to_run({"onnx": "m.onnx", "fp16_onnx": "m16.onnx"}, False)[1]
    assert file_to_run(files, gpu=True)[0] == "m16.onnx"
    assert file_to_run({**files, "engine": "m.engine"}, gpu=True)[0] == "m.engine"


# ---- item 12: the README's Python example runs as written -------------------------------------------------
def test_readme_python_example_runs(monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Python API"):].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 (our own README)
    assert tuple(scope["logits"].shape) == (1, 19, 128, 256) and tuple(scope["labels"].shape) == (1, 128, 256)


def test_normalize_takes_numpy_images_like_tensors():
    import torch

    from sfda_deploy.metadata import ModelMeta

    meta = ModelMeta(arch="tiny")
    image = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    want = meta.normalize(torch.from_numpy(image).permute(2, 0, 1)[None])
    assert torch.equal(meta.normalize(image), want) and torch.equal(meta.normalize(image[None]), want)
    with pytest.raises(SfdaError, match=r"RGB \[H,W,3\] or \[B,H,W,3\]"):
        meta.normalize(np.zeros((3, 4, 6), np.uint8))


# ---- items 13 and 14: help texts and small things --------------------------------------------------------
def test_help_texts_say_times_and_places(invoke):
    words = " ".join(invoke(["generate-data", "--help"]).output.split())
    assert "the bundled model's recipe: ~1 h on a CPU" in words and "--iters 3000 --batch 4 --crop 128 128" in words
    assert "labels/conditions.csv" in words


def test_overlay_legend_stays_within_a_third_of_a_small_frame():
    from sfda_deploy.runtime.render import LEGEND_MAX_HEIGHT, draw_legend

    image = np.full((128, 256, 3), 200, np.uint8)
    palette = np.zeros((19, 3), np.uint8)
    draw_legend(image, list(range(6)), [f"class {k}" for k in range(19)], palette)
    dark_rows = np.nonzero((image[:, 0] < 200).any(axis=1))[0]
    assert dark_rows.size and dark_rows.size <= LEGEND_MAX_HEIGHT * 128
    big = np.full((720, 1280, 3), 200, np.uint8)
    draw_legend(big, list(range(6)), [f"class {k}" for k in range(19)], palette)
    assert np.nonzero((big[:, 0] < 200).any(axis=1))[0].size >= 6 * 26  # a large frame keeps every row


def test_one_labelled_frame_is_singular():
    from sfda_deploy.runtime.label_scores import format_scores

    scores = {"frames": 1, "overall": {"miou": 50.0, "pixel_acc": 90.0, "iou": {}}, "per_condition": {},
              "per_round": {}, "per_round_condition": {}}
    assert format_scores(scores)[0].startswith("mIoU 50.00 over 1 labelled frame")


def test_verify_names_a_then_b_and_the_folders_it_read(invoke, tmp_path):
    from tests.test_export import _write_frames

    ckpt = make_checkpoint(tmp_path / "tiny.safetensors", input_size=(32, 48))
    data = _write_frames(tmp_path / "cs", 2, size=(32, 48))
    result = invoke(["verify", ckpt, ckpt, "--data", data])
    assert result.exit_code == 0, result.output
    assert "A tiny.safetensors vs B tiny.safetensors: argmax agreement" in result.output
    assert f"on 2 images of {data} (leftImg8bit/val/synth)" in result.output
