"""``sfda-deploy segment`` end to end (tiny models, tiny media) and every bad input through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from sfda_deploy.classes import get_class_set
from sfda_deploy.metadata import ModelMeta
from tests.conftest import assert_user_error
from tests.runtime_data import make_checkpoint, make_images, make_onnx, make_video, video_info

SUMMARY_KEYS = {"source", "source_kind", "input_fps", "input_size", "frames", "frames_expected",
                "unreadable_frames", "dropped_frames", "partial", "fps_end_to_end", "ms_per_frame",
                "backend", "device", "providers", "input_size", "class_share_mean", "per_frame", "outputs"}


@pytest.fixture
def ckpt(tmp_path):
    return make_checkpoint(tmp_path / "tiny.safetensors")


@pytest.fixture
def onnx_model(tmp_path):
    return make_onnx(tmp_path / "tiny.onnx")


def _runs(tmp_path):
    root = tmp_path / "runs" / "segment"
    return sorted(p for p in root.iterdir()) if root.exists() else []


def _summary(tmp_path):
    (run,) = _runs(tmp_path)
    return run, json.loads((run / "summary.json").read_text())


@pytest.mark.parametrize("model", ["ckpt", "onnx_model"])
def test_video_keeps_frames_fps_size_and_order(invoke, tmp_path, model, request):
    video = make_video(tmp_path / "v.mp4", n=10, fps=12.0)
    result = invoke(["segment", video, "--model", request.getfixturevalue(model), "--alpha", "0"])
    assert result.exit_code == 0, result.output
    run, s = _summary(tmp_path)
    assert SUMMARY_KEYS <= set(s)
    assert (s["frames"], s["frames_expected"], s["partial"], s["source_kind"]) == (10, 10, False, "video")
    assert s["backend"] == ("torch" if model == "ckpt" else "onnxruntime")
    assert s["outputs"]["video"] == "overlay.mp4" and s["outputs"]["video_frames"] == 10
    frames, fps, size, levels = video_info(run / "overlay.mp4")
    assert (frames, fps, size) == (10, 12.0, (48, 80))
    # --alpha 0 leaves the frames as they were: frame i is grey 20*i, so the order is visible.
    assert [round(v / 20) for v in levels] == list(range(10))
    assert [f["index"] for f in s["per_frame"]] == list(range(10))
    for f in s["per_frame"]:
        assert len(f["class_share"]) == 19 and abs(sum(f["class_share"]) - 1) < 1e-4
    assert abs(sum(s["class_share_mean"].values()) - 1) < 1e-4
    assert s["fps_end_to_end"] > 0 and all(v >= 0 for v in s["ms_per_frame"].values())
    assert "fps end to end" in result.output and "overlay.mp4" in result.output
    assert not list(run.glob(".*"))  # no temporary file left


def test_torch_and_onnx_agree(tmp_path, ckpt, onnx_model):
    from sfda_deploy.runtime.backends import load_backend

    frames = np.random.default_rng(0).integers(0, 256, (2, 40, 60, 3), dtype=np.uint8)
    a, b = load_backend(str(ckpt)), load_backend(str(onnx_model), "auto", "cpu", None, 2)
    la, lb = a.infer(a.preprocess(frames))[:2], b.infer(b.preprocess(frames))
    assert la.shape == lb.shape == (2, 32, 64) and la.dtype == np.uint8
    assert (la == lb).mean() > 0.99


@pytest.mark.parametrize("fmt", ["trainid", "labelid", "color"])
def test_images_folder_glob_list_with_masks(invoke, tmp_path, ckpt, fmt):
    make_images(tmp_path / "imgs", n=3)
    (tmp_path / "list.txt").write_text("imgs/img2.png\nimgs/img0.png\n")
    for source, n in ((tmp_path / "imgs", 3), (tmp_path / "imgs" / "img1.png", 1),
                      (str(tmp_path / "imgs" / "*.png"), 3), (tmp_path / "list.txt", 2)):
        result = invoke(["segment", source, "--model", ckpt, "--save-masks", "--mask-format", fmt])
        assert result.exit_code == 0, result.output
    runs = _runs(tmp_path)
    assert len(runs) == 4
    masks = sorted((runs[0] / "masks").glob("*.png"))
    assert [m.name for m in masks] == ["img0.png", "img1.png", "img2.png"]
    assert sorted(p.name for p in (runs[3] / "overlays").glob("*.png")) == ["img0.png", "img2.png"]
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(runs[0] / "overlays" / "img0.png"))
    assert mask.shape[:2] == overlay.shape[:2] == (40, 60)  # back at the image's size
    classes = get_class_set("cityscapes19")
    if fmt == "trainid":
        assert set(np.unique(mask)) <= set(range(19))
    elif fmt == "labelid":
        assert set(np.unique(mask)) <= set(int(v) for v in classes.index_to_labelid()[:19])
    else:
        assert mask.shape == (40, 60, 3)
        colours = {tuple(c[::-1]) for c in classes.palette}  # PNG holds BGR
        assert {tuple(p) for p in mask.reshape(-1, 3)} <= colours


def test_unreadable_frames_are_counted(invoke, tmp_path, ckpt):
    make_images(tmp_path / "imgs", n=2)
    (tmp_path / "imgs" / "zz_broken.png").write_bytes(b"not a png")
    result = invoke(["segment", tmp_path / "imgs", "--model", ckpt])
    assert result.exit_code == 0, result.output
    _, s = _summary(tmp_path)
    assert (s["frames"], s["unreadable_frames"]) == (2, 1)
    assert "skipped 1 unreadable" in result.output


def test_batch_stride_and_max_frames(invoke, tmp_path, onnx_model):
    video = make_video(tmp_path / "v.mp4", n=10, fps=12.0)
    result = invoke(["segment", video, "--model", onnx_model, "--batch", 3, "--vid-stride", 2,
                     "--max-frames", 4, "--alpha", "0", "--show-fps"])
    assert result.exit_code == 0, result.output
    run, s = _summary(tmp_path)
    assert (s["frames"], s["frames_expected"], s["batch"]) == (4, 4, 3)
    frames, fps, _, levels = video_info(run / "overlay.mp4")
    assert (frames, fps) == (4, 6.0)  # fps / stride keeps the clip's duration


def test_ctrl_c_leaves_a_marked_partial_video(invoke, tmp_path, ckpt, monkeypatch):
    import sfda_deploy.runtime.segment as seg

    real = seg.load_backend

    def interrupting(*a, **kw):
        backend = real(*a, **kw)
        infer, calls = backend.infer, []

        def infer_then_stop(x):
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
            return infer(x)

        backend.infer = infer_then_stop
        return backend

    monkeypatch.setattr(seg, "load_backend", interrupting)
    result = invoke(["segment", make_video(tmp_path / "v.mp4", n=10), "--model", ckpt])
    assert result.exit_code == 130
    run, s = _summary(tmp_path)
    assert s["partial"] is True and s["frames"] == 3
    assert video_info(run / "overlay.mp4")[0] == 3


# ------------------------------------------------------------------------------- bad inputs
def _no_output(tmp_path):
    assert _runs(tmp_path) == []


def test_bad_sources(invoke, tmp_path, ckpt):
    (tmp_path / "empty").mkdir()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "notes.dat").write_text("hello " * 50)
    data = make_video(tmp_path / "v.mp4", n=12).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    for source, fragment in ((tmp_path / "missing.mp4", "does not exist"),
                             (tmp_path / "empty", "has no images"),
                             (tmp_path / "zero.mp4", "cannot be opened"),
                             (tmp_path / "cut.mp4", "truncated"),
                             (tmp_path / "notes.dat", "not a readable image or video")):
        assert_user_error(invoke(["segment", source, "--model", ckpt]), fragment)
    _no_output(tmp_path)


def test_bad_models(invoke, tmp_path, ckpt):
    image = make_images(tmp_path / "imgs", n=1)[0]
    no_meta = make_onnx(tmp_path / "plain.onnx", with_meta=False)
    wrong_set = make_onnx(tmp_path / "wrong_set.onnx", ModelMeta(arch="tiny", num_classes=5))
    wrong_channels = make_onnx(tmp_path / "wrong_ch.onnx", ModelMeta(arch="tiny", class_set="synthia16",
                                                                      num_classes=16))
    static = make_onnx(tmp_path / "static.onnx", dynamic=False)
    (tmp_path / "model.xyz").write_bytes(b"x")
    (tmp_path / "corrupt.onnx").write_bytes(b"not onnx")
    cases = [
        (["--model", tmp_path / "missing.onnx"], "does not exist"),
        (["--model", no_meta], "re-export"),
        (["--model", wrong_set], "class set"),
        (["--model", wrong_channels], "outputs 19 channels"),
        (["--model", static, "--imgsz", 64, 64], "static input"),
        (["--model", static, "--batch", 4], "static batch"),
        (["--model", tmp_path / "model.xyz"], "--backend"),
        (["--model", tmp_path / "corrupt.onnx"], "cannot load"),
        (["--model", ckpt, "--backend", "nope"], "--backend"),
        (["--model", ckpt, "--device", "cuda"] if not _cuda() else ["--model", ckpt, "--device", "tpu"],
         "--device" if not _cuda() else "unknown device"),
        (["--model", ckpt, "--alpha", 2], "--alpha"),
        (["--model", ckpt, "--batch", 0], "--batch"),
    ]
    for args, fragment in cases:
        assert_user_error(invoke(["segment", image, *args]), fragment)
    _no_output(tmp_path)


def test_engine_needs_sidecar_and_gpu(invoke, tmp_path):
    image = make_images(tmp_path / "imgs", n=1)[0]
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    assert_user_error(invoke(["segment", image, "--model", engine]), "no sidecar")
    (tmp_path / "model.engine.json").write_text(json.dumps(
        {"meta": ModelMeta(arch="tiny").to_dict(), "cache_key": {"tensorrt": "10.7.0"}}))
    if not _cuda():
        assert_user_error(invoke(["segment", image, "--model", engine]), "CUDA GPU")
    _no_output(tmp_path)


def test_unwritable_output(invoke, tmp_path, ckpt, monkeypatch):
    image = make_images(tmp_path / "imgs", n=1)[0]
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("SFDA_RUNS_DIR", str(tmp_path / "afile"))
    assert_user_error(invoke(["segment", image, "--model", ckpt]), "SFDA_RUNS_DIR")


def _cuda():
    import torch

    return torch.cuda.is_available()
