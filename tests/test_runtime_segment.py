"""``sfda-deploy segment`` end to end (tiny models, tiny media) and every bad input through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sfda_deploy.classes import get_class_set
from sfda_deploy.metadata import ModelMeta
from tests.conftest import assert_user_error, copy_of
from tests.runtime_data import make_images, make_onnx, make_video, video_info

SUMMARY_KEYS = {"source", "source_kind", "input_fps", "input_size", "frames", "frames_expected",
                "unreadable_frames", "dropped_frames", "partial", "fps_end_to_end", "ms_per_frame",
                "backend", "device", "providers", "input_size", "class_share_mean", "per_frame", "outputs"}


@pytest.fixture
def ckpt(tmp_path, session_files):
    return copy_of(session_files.checkpoint, tmp_path)


@pytest.fixture
def onnx_model(tmp_path, session_files):
    return copy_of(session_files.onnx, tmp_path)


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
    bar = result.stderr.replace("\r", "\n").splitlines()  # the progress bar with frames/s
    assert any(line.startswith(f"segment {s['backend']}: 100%") and "10/10" in line and "frame/s" in line
               for line in bar), result.stderr[-400:]
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


def test_batch_stride_max_frames_and_threads(invoke, tmp_path, onnx_model):
    video = make_video(tmp_path / "v.mp4", n=10, fps=12.0)
    before = torch.get_num_threads()
    try:
        result = invoke(["segment", video, "--model", onnx_model, "--batch", 3, "--vid-stride", 2,
                         "--max-frames", 4, "--alpha", "0", "--show-fps", "--threads", 1])
    finally:
        torch.set_num_threads(before)  # --threads caps torch process-wide
    assert result.exit_code == 0, result.output
    run, s = _summary(tmp_path)
    assert (s["frames"], s["frames_expected"], s["batch"], s["threads"]) == (4, 4, 3, 1)
    frames, fps, _, levels = video_info(run / "overlay.mp4")
    assert (frames, fps) == (4, 6.0)  # fps / stride keeps the clip's duration


def test_ctrl_c_leaves_a_marked_partial_video(invoke, tmp_path, ckpt, monkeypatch):
    import sfda_deploy.commands.segment as seg

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


def test_ctrl_c_while_decoding_leaves_k_playable_frames(invoke, tmp_path, ckpt, monkeypatch):
    import sfda_deploy.commands.segment as seg

    real = seg.open_source

    def interrupting(*a, **kw):
        source = real(*a, **kw)
        frames = source._video

        def five_then_stop():
            for n, item in enumerate(frames()):
                if n == 5:
                    raise KeyboardInterrupt  # Ctrl-C lands while the 6th frame is decoded
                yield item

        source._video = five_then_stop
        return source

    monkeypatch.setattr(seg, "open_source", interrupting)
    result = invoke(["segment", make_video(tmp_path / "v.mp4", n=10, fps=12.0), "--model", ckpt,
                     "--alpha", "0"])
    assert result.exit_code == 130 and "PARTIAL" in result.output
    run, s = _summary(tmp_path)
    assert (s["partial"], s["frames"], s["outputs"]["video_frames"]) == (True, 5, 5)
    frames, fps, size, levels = video_info(run / "overlay.mp4")
    assert (frames, fps, size) == (5, 12.0, (48, 80))
    assert [round(v / 20) for v in levels] == [0, 1, 2, 3, 4]
    assert not list(run.glob(".*"))  # the temporary video name is gone


def test_bundled_model_without_model_flag(invoke, tmp_path):
    from sfda_deploy.assets import BUNDLED_MODEL

    assert BUNDLED_MODEL.is_file()  # shipped in the package: a missing file is a packaging bug
    image = make_images(tmp_path / "imgs", n=1)[0]
    result = invoke(["segment", image, "--save-masks"])
    assert result.exit_code == 0, result.output
    run, s = _summary(tmp_path)
    assert s["model"] == "bundled demo model" and s["arch"] == "mobilenetv2_aspp"
    assert s["frames"] == 1 and cv2.imread(str(run / "masks" / "img0.png")).shape[:2] == (40, 60)


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_resize_modes_keep_the_frame_size(invoke, tmp_path, onnx_model, mode):
    # 48x80 frames (aspect 0.6) into the 32x64 model (0.5): letterbox pads, stretch distorts.
    video = make_video(tmp_path / "v.mp4", n=3, fps=12.0)
    result = invoke(["segment", video, "--model", onnx_model, "--resize", mode, "--save-masks"])
    assert result.exit_code == 0, result.output
    run, s = _summary(tmp_path)
    assert s["resize"] == mode and s["frames"] == 3
    assert video_info(run / "overlay.mp4")[2] == (48, 80)
    masks = sorted((run / "masks").glob("*.png"))
    assert len(masks) == 3 and all(cv2.imread(str(m)).shape[:2] == (48, 80) for m in masks)


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
        (["--model", ckpt, "--threads", 0], "--threads 0 is not allowed: use an integer >= 1"),
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


def test_unreachable_stream(invoke, tmp_path, ckpt):
    # port 9 (discard): nothing listens, the connection is refused at once
    assert_user_error(invoke(["segment", "rtsp://127.0.0.1:9/cam", "--model", ckpt]), "unreachable")
    _no_output(tmp_path)


def test_engine_built_elsewhere_through_the_cli(invoke, tmp_path, monkeypatch):
    """The build-key guard fires before any TensorRT object exists (the 'GPU' here is faked)."""
    import types

    import torch

    from sfda_deploy.runtime import engine as eng
    from sfda_deploy.runtime import engine_file as EF

    image = make_images(tmp_path / "imgs", n=1)[0]
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    EF.sidecar_path(engine).write_text(json.dumps(
        {"meta": ModelMeta(arch="tiny").to_dict(),
         "cache_key": {"tensorrt": "8.6.1", "gpu": "NVIDIA A100", "compute_capability": "8.0"}}))

    def no_trt_objects(*a, **kw):
        raise AssertionError("a TensorRT object was created")

    fake_trt = types.SimpleNamespace(__version__="10.7.0", Logger=no_trt_objects, Runtime=no_trt_objects)
    monkeypatch.setattr(eng, "import_tensorrt", lambda device: fake_trt)
    monkeypatch.setattr(eng, "parse_device", lambda device: "cuda:0")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (9, 0))
    result = invoke(["segment", image, "--model", engine, "--device", "cuda"])
    assert_user_error(result, "built elsewhere", "TensorRT 8.6.1 (built) vs 10.7.0 (here)",
                      "compute capability 8.0 (built) vs 9.0 (here)", "sfda-deploy export")
    _no_output(tmp_path)


def test_unwritable_output(invoke, tmp_path, ckpt, monkeypatch):
    image = make_images(tmp_path / "imgs", n=1)[0]
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("SFDA_RUNS_DIR", str(tmp_path / "afile" / "runs"))  # below a regular file
    assert_user_error(invoke(["segment", image, "--model", ckpt]), "SFDA_RUNS_DIR")
    assert (tmp_path / "afile").read_text() == ""  # nothing written in its place


def test_no_save_video_and_named_runs_never_overwrite(invoke, tmp_path, ckpt):
    video = make_video(tmp_path / "v.mp4", n=3, fps=10.0)
    for _ in range(2):
        result = invoke(["segment", video, "--model", ckpt, "--no-save-video", "--save-masks", "--name", "cam1"])
        assert result.exit_code == 0, result.output
    runs = _runs(tmp_path)
    assert [r.name for r in runs] == ["cam1", "cam1-2"]  # the second run did not write over the first
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert "video" not in summary["outputs"] and not list(run.glob("*.mp4"))
        assert len(list((run / "masks").glob("*.png"))) == 3


def test_disk_full_mid_run_keeps_what_was_written_and_marks_the_run_failed(invoke, tmp_path, ckpt, monkeypatch):
    """ENOSPC injected at the mask writer (tests/test_disk_full.py fills a real tmpfs where it may mount one)."""
    import errno

    from sfda_deploy import runs

    images = make_images(tmp_path / "imgs", n=4)[0].parent
    real, calls = Path.write_bytes, []

    def filling_up(self, data):
        if self.name.endswith(".tmp.png") and self.parent.name == "masks":
            calls.append(len(data))
            if len(calls) == 2:  # the second mask PNG: the disk is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", filling_up)
    result = invoke(["segment", images, "--model", ckpt, "--save-masks", "--no-save-video"])
    assert result.exit_code == 2 and "Traceback" not in result.output + result.stderr
    lines = result.stderr.strip().splitlines()  # the progress bar up to the failure, then one error line
    assert sum("error:" in line for line in lines) == 1
    (run,) = _runs(tmp_path)
    size = f"{calls[1]} B" if calls[1] < 1024 else f"{calls[1] / 1024:.1f} KiB"
    assert lines[-1].startswith(f"error: the disk is full: writing img1.png ({size}) into {run / 'masks'} "
                                "failed with "), lines[-1]
    assert lines[-1].endswith("free: free some space or write elsewhere (SFDA_RUNS_DIR=/path)")
    assert [p.name for p in (run / "masks").iterdir()] == ["img0.png"]  # the first stays, nothing half-written
    assert cv2.imread(str(run / "masks" / "img0.png"), cv2.IMREAD_UNCHANGED).shape == (40, 60)
    assert runs.run_status(run)[0] == "failed"
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["masks_written"], summary["failed"]) == (1, lines[-1][len("error: "):])


def _cuda():
    import torch

    return torch.cuda.is_available()


def test_backends_are_registered_and_auto_picks_by_their_suffixes(monkeypatch, tmp_path):
    from sfda_deploy.errors import SfdaError
    from sfda_deploy.runtime import backends as B

    assert list(B.BACKEND_KINDS) == ["torch", "onnxruntime", "tensorrt"]
    assert [B.backend_for(Path(f"m{s}"), "auto") for s in (".safetensors", ".pt", ".onnx", ".plan")] == [
        "torch", "torch", "onnxruntime", "tensorrt"]
    with pytest.raises(SfdaError, match=r"--backend tensorrt needs a \.engine file .* \(\.onnx files run on onnxruntime\)"):
        B.backend_for(Path("m.onnx"), "tensorrt")
    with pytest.raises(SfdaError, match=r"use \.safetensors \(torch\), \.onnx \(onnxruntime\), \.engine \(tensorrt\)"):
        B.backend_for(Path("m.xyz"), "auto")
    # a new backend: one register_backend call, and load_backend opens its files with it
    monkeypatch.setattr(B, "BACKEND_KINDS", dict(B.BACKEND_KINDS))
    opened = []
    B.register_backend(B.BackendKind("echo", (".echo",), ".echo file", "echo >", lambda *a: opened.append(a) or "ok"))
    (tmp_path / "m.echo").write_text("x")
    assert B.load_backend(str(tmp_path / "m.echo"), imgsz=(32, 64), batch=2) == "ok"
    path, device, imgsz, batch, options = opened[0]
    assert (path.name, device, imgsz, batch) == ("m.echo", "cpu", (32, 64), 2) and options["reference"] is False
    with pytest.raises(SfdaError, match="choose auto, torch, onnxruntime, tensorrt, echo"):
        B.backend_for(Path("m.onnx"), "ehco")
