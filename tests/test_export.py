"""Export: ONNX (metadata, parity, fp16, int8 Q/DQ), verify, and every bad input through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.errors import SfdaError
from sfda_deploy.export.verify import Fidelity
from sfda_deploy.metadata import ModelMeta, read_onnx_meta
from sfda_deploy.models import build_model
from tests.conftest import assert_user_error

SIZE = (32, 48)  # H W: multiples of the output stride 8, tiny for 2 CPU cores


@pytest.fixture
def ckpt(tmp_path):
    import torch

    torch.manual_seed(0)
    model = build_model("tiny", num_classes=19).eval()
    meta = ModelMeta(arch="tiny", input_size=SIZE).with_provenance(command="adapt", method="atp")
    return save_checkpoint(tmp_path / "adapted" / "model.safetensors", model, meta)


def _write_frames(root: Path, n: int, size=SIZE, labels: bool = False) -> Path:
    """Cityscapes-layout frames (with trainId labels when asked), as the synthetic benchmark writes them."""
    rng = np.random.default_rng(1)
    for i in range(n):
        img_dir = root / "leftImg8bit" / "val" / "synth"
        img_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_dir / f"f{i}_leftImg8bit.png"), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        if labels:
            lab_dir = root / "gtFine" / "val" / "synth"
            lab_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(lab_dir / f"f{i}_gtFine_labelTrainIds.png"),
                        rng.integers(0, 19, size, dtype=np.uint8))
    return root


def _only_run(tmp_path) -> Path:
    runs = list((tmp_path / "runs" / "export").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def _onnx_meta(path: Path) -> ModelMeta:
    proto = onnx.load(str(path))
    return read_onnx_meta({p.key: p.value for p in proto.metadata_props}, str(path))


# --------------------------------------------------------------------------- fidelity math
def test_fidelity_known_answer():
    # a: argmax per pixel = [0, 1, 1, 0]; b: [0, 1, 0, 0] → 3 of 4 agree = 75 %.
    a = np.array([[[[2.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [3.0, 0.0]]]])   # [1,2,2,2]
    b = np.array([[[[2.0, 0.0], [0.5, 1.0]], [[1.0, 1.5], [0.0, 0.0]]]])
    labels = np.array([[[0, 1], [1, 255]]])
    fid = Fidelity(2)
    fid.update(a, b, labels)
    r = fid.result(["x", "y"])
    assert r["argmax_agreement"] == 75.0
    # |Δ| = 0.5 (b[0,0,1,0]), 0.5 (b[0,1,0,1]), 3.0 (b[0,1,1,0]) → max 3.0, mean 4.0 / 8 = 0.5
    assert r["max_abs_diff"] == 3.0 and r["mean_abs_diff"] == 0.5
    # a on labelled pixels (0,1,1): IoU x = 1/1, y = 2/2 → 100; b (0,1,0): x = 1/2, y = 1/2 → 50.
    assert r["miou_a"] == pytest.approx(100.0) and r["miou_b"] == pytest.approx(50.0)
    assert r["delta_miou"] == -50.0


def test_fidelity_masks_have_no_logit_diff():
    fid = Fidelity(3)
    fid.update(np.array([[[0, 1, 2]]]), np.array([[[0, 1, 1]]]))
    r = fid.result(["a", "b", "c"])
    assert r["argmax_agreement"] == pytest.approx(200 / 3) and r["max_abs_diff"] is None


# ------------------------------------------------------------------------------ export CLI
def test_export_onnx_static_logits(invoke, ckpt, tmp_path):
    result = invoke(["export", ckpt])
    assert result.exit_code == 0, result.output
    assert "argmax agreement 100.0000%" in result.output and "--model" in result.output
    run = _only_run(tmp_path)
    assert sorted(p.name for p in run.iterdir()) == ["log.txt", "model.onnx", "report.json"]  # no stray .data
    proto = onnx.load(str(run / "model.onnx"))
    onnx.checker.check_model(proto)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, *SIZE]
    meta = _onnx_meta(run / "model.onnx")
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["layout"] == "NCHW" and json.loads(props["class_names"])[0] == "road"
    assert meta.arch == "tiny" and meta.class_set == "cityscapes19" and meta.input_size == SIZE
    assert meta.extra["output"] == "logits" and meta.extra["precision"] == "fp32" and not meta.extra["dynamic"]
    assert [p["command"] for p in meta.provenance] == ["adapt", "export"]  # adaptation provenance kept
    report = json.loads((run / "report.json").read_text())
    assert report["passed"] and report["parity"]["onnx_fp32"]["argmax_agreement"] >= 99.99
    assert report["parity"]["onnx_fp32"]["max_abs_diff"] < 1e-3


def test_export_dynamic_mask_uint8(invoke, ckpt, tmp_path):
    result = invoke(["export", ckpt, "--dynamic", "--output", "mask", "--mask-dtype", "uint8",
                     "--imgsz", 48, 64])
    assert result.exit_code == 0, result.output
    path = _only_run(tmp_path) / "model.onnx"
    proto = onnx.load(str(path))
    out = proto.graph.output[0]
    assert out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    from sfda_deploy.onnxrt import create_session

    session, _ = create_session(path)
    x = np.zeros((3, 3, 40, 56), np.float32)  # another batch and size than exported
    assert session.run(None, {"images": x})[0].shape == (3, 40, 56)
    assert _onnx_meta(path).extra["mask_dtype"] == "uint8"


def test_export_fp16_and_verify_with_labels(invoke, ckpt, tmp_path):
    data = _write_frames(tmp_path / "val", 3, labels=True)
    result = invoke(["export", ckpt, "--fp16", "--verify-data", data, "--name", "half"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "export" / "half"
    half = run / "model_fp16.onnx"
    assert _onnx_meta(half).extra["precision"] == "fp16"
    report = json.loads((run / "report.json").read_text())
    fp16 = report["parity"]["onnx_fp16"]
    assert fp16["delta_miou"] is not None and fp16["max_abs_diff"] < 0.05
    # verify: checkpoint vs fp16 ONNX on the labelled frames
    result = invoke(["verify", ckpt, half, "--data", data])
    assert result.exit_code == 0, result.output
    assert "argmax agreement" in result.output and "mIoU" in result.output
    verify = json.loads((tmp_path / "runs" / "verify" / "verify" / "report.json").read_text())
    assert verify["images"] == 3 and verify["argmax_agreement"] > 95
    assert verify["latency_ms_a"] > 0 and verify["latency_ms_b"] > 0


def test_export_int8_qdq(invoke, ckpt, tmp_path):
    calib = _write_frames(tmp_path / "calib", 4)
    with pytest.warns(UserWarning, match="calibrating INT8 on 4 frames"):
        result = invoke(["export", ckpt, "--int8", "--calib-data", calib, "--calib-count", 4])
    assert result.exit_code == 0, result.output
    path = _only_run(tmp_path) / "model_int8.onnx"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert _onnx_meta(path).extra["precision"] == "int8"


def test_verify_onnx_vs_onnx_generated_frames(invoke, ckpt, tmp_path):
    assert invoke(["export", ckpt, "--name", "a"]).exit_code == 0
    onnx_a = tmp_path / "runs" / "export" / "a" / "model.onnx"
    result = invoke(["verify", onnx_a, onnx_a])
    assert result.exit_code == 0, result.output
    assert "argmax agreement 100.0000%, max |Δlogit| 0.00e+00" in result.output


@pytest.mark.parametrize("arch,dynamic,output", [
    ("mobilenetv2_aspp", False, "logits"), ("deeplabv2_r101", False, "logits"), ("deeplabv2_r50", False, "mask"),
    ("mobilenetv2_aspp", True, "mask"), ("deeplabv2_r50", True, "logits"),
])
@pytest.mark.slow  # end to end (seconds to a minute): left out by `make test-fast`
def test_real_models_onnx_parity(arch, dynamic, output):
    """Every registered real architecture exports and matches torch in ONNX Runtime (CPU, 64x64)."""
    import torch

    from sfda_deploy.export.onnx import export_module
    from sfda_deploy.onnxrt import create_session

    torch.manual_seed(0)
    model = build_model(arch, num_classes=19).eval()
    proto = export_module(model, (64, 64), 2 if dynamic else 1, dynamic, 18, output)
    path = Path("m.onnx")
    path.write_bytes(proto.SerializeToString())
    session, _ = create_session(path)
    x = torch.randn(1, 3, 64, 64) if not dynamic else torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        ref = model(x)
    got = session.run(None, {"images": x.numpy()})[0]
    if output == "logits":
        # relative: randomly initialised ResNets give logits of ~1e4 (float32 keeps ~7 digits)
        assert np.abs(got - ref.numpy()).max() <= 1e-5 * max(1.0, float(ref.abs().max()))
        agree = (got.argmax(1) == ref.argmax(1).numpy()).mean()
    else:
        agree = (got == ref.argmax(1).numpy()).mean()
    assert agree >= 0.9999


# ------------------------------------------------------------------------------ bad input
def _no_model_files(tmp_path):
    root = tmp_path / "runs" / "export"
    leftovers = [p for p in root.rglob("*") if p.suffix in (".onnx", ".engine", ".tmp")] if root.exists() else []
    assert leftovers == []


def test_bad_inputs(invoke, ckpt, tmp_path):
    assert_user_error(invoke(["export", tmp_path / "missing.safetensors"]), "does not exist")
    assert_user_error(invoke(["export"]), "needs a checkpoint")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_user_error(invoke(["export", text]))
    assert_user_error(invoke(["export", ckpt, "--imgsz", 30, 48]), "not divisible", "--imgsz 32 48")
    assert_user_error(invoke(["export", ckpt, "--imgsz", 0, 48]), "--imgsz [0, 48] is not allowed")
    assert_user_error(invoke(["export", ckpt, "--int8"]), "--calib-data")
    assert_user_error(invoke(["export", ckpt, "--int8", "--fp16", "--calib-data", tmp_path]), "pick one")
    assert_user_error(invoke(["export", ckpt, "--no-onnx"]), "--no-onnx")  # no such flag: ONNX is always written
    config = tmp_path / "export.yaml"
    config.write_text("onnx: false\n")
    assert_user_error(invoke(["export", ckpt, "--config", config]), "'onnx: false' cannot be honoured")
    assert_user_error(invoke(["export", ckpt, "--int8", "--calib-data", tmp_path / "nope"]), "does not exist")
    wide = _write_frames(tmp_path / "wide", 1, (32, 128))
    assert_user_error(invoke(["export", ckpt, "--verify-data", wide]), "aspect ratio")
    assert_user_error(invoke(["export", ckpt, "--int8", "--calib-data", wide]), "aspect ratio")  # wrong size
    onnx_file = tmp_path / "plain.onnx"
    onnx_file.write_bytes(b"")
    assert_user_error(invoke(["export", onnx_file]), "not a checkpoint")
    _no_model_files(tmp_path)


def test_wrong_class_set_labels(invoke, ckpt, tmp_path):
    data = _write_frames(tmp_path / "val", 1, labels=True)
    label = next((data / "gtFine").rglob("*.png"))
    cv2.imwrite(str(label), np.full(SIZE, 40, np.uint8))  # 40: no Cityscapes trainId
    assert_user_error(invoke(["export", ckpt, "--verify-data", data]), "not Cityscapes trainIds")
    assert_user_error(invoke(["export", ckpt, "--int8", "--calib-data", data]), "not Cityscapes trainIds")
    _no_model_files(tmp_path)


def test_trainid_labels_map_to_the_models_class_set(tmp_path):
    # synthia16 = the 19 Cityscapes classes minus terrain (9), truck (14), train (16), in trainId order:
    # trainId 10 (sky) is index 9, 18 (bicycle) index 15, 14 (truck) has no index (255), 255 stays 255
    from sfda_deploy.classes import get_class_set
    from sfda_deploy.data.frames import _read_label

    path = tmp_path / "x_gtFine_labelTrainIds.png"
    cv2.imwrite(str(path), np.array([[10, 18], [14, 255]], np.uint8))
    got = _read_label(path, "trainid", get_class_set("synthia16"), (2, 2))
    assert got.tolist() == [[9, 15], [255, 255]]
    assert _read_label(path, "trainid", get_class_set("cityscapes19"), (2, 2)).tolist() == [[10, 18], [14, 255]]


def test_engine_profile_bounds_without_trt_are_refused(invoke, ckpt, tmp_path):
    assert_user_error(invoke(["export", ckpt, "--max-batch", "4"]), "add --trt --dynamic")
    assert_user_error(invoke(["export", ckpt, "--max-imgsz", "64", "128"]), "add --trt --dynamic")
    assert not (tmp_path / "runs" / "export").exists()


def _no_tensorrt_here(monkeypatch, gpu: bool, installed: bool) -> None:
    import importlib.util

    import torch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if installed else None) if name == "tensorrt" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)


def test_why_tensorrt_cannot_run_here(monkeypatch):
    from sfda_deploy.runtime.engine import tensorrt_missing

    for gpu, installed, why in ((False, True, "no CUDA GPU"), (False, False, "no CUDA GPU"),
                                (True, False, "TensorRT is not installed"), (True, True, None)):
        _no_tensorrt_here(monkeypatch, gpu, installed)
        assert tensorrt_missing() == why


@pytest.mark.parametrize("why", ["no CUDA GPU", "TensorRT is not installed"])
def test_trt_without_gpu_or_tensorrt_writes_the_onnx_then_says_where_to_build(invoke, ckpt, tmp_path, monkeypatch,
                                                                               why):
    """Issue 19 item 3: the ONNX and its parity report first, then ONE short line on building the engine."""
    import sfda_deploy.runtime.engine as eng

    monkeypatch.setattr(eng, "tensorrt_missing", lambda: why)
    result = invoke(["export", ckpt, "--trt"])
    assert result.exit_code == 0, result.output
    run = _only_run(tmp_path)
    assert (run / "model.onnx").is_file() and not (run / "model.engine").exists()
    report = json.loads((run / "report.json").read_text())
    assert report["passed"] and report["engine_skipped"] == why and "onnx_fp32" in report["parity"]
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("no TensorRT engine built")]
    assert f"({why} here)" in line and f"sfda-deploy export {run / 'model.onnx'} --trt" in line
    assert "trtexec --onnx=model.onnx" in line and "not installed" not in line.replace(why, "")
    assert "ONNX fp32 vs torch: argmax agreement" in result.stdout


def test_onnx_with_trt_builds_only_where_tensorrt_runs(invoke, ckpt, tmp_path, monkeypatch):
    """``export model.onnx --trt`` is the command the line above names; here (no GPU) it says where to run it."""
    assert invoke(["export", ckpt]).exit_code == 0
    onnx_file = _only_run(tmp_path) / "model.onnx"
    _no_tensorrt_here(monkeypatch, gpu=False, installed=False)
    assert_user_error(invoke(["export", onnx_file, "--trt"]), "needs an NVIDIA GPU with TensorRT (no CUDA GPU here)",
                      "deployment machine")
    assert_user_error(invoke(["export", onnx_file, "--trt", "--fp16"]), "fixed inside an exported ONNX")
    assert len(list((tmp_path / "runs" / "export").iterdir())) == 1  # nothing new was written


def test_verify_bad_inputs(invoke, ckpt, tmp_path):
    assert_user_error(invoke(["verify", ckpt]), "two models")
    assert_user_error(invoke(["verify", ckpt, tmp_path / "x.onnx"]), "does not exist")
    other = tmp_path / "x.bin"
    other.write_bytes(b"0")
    assert_user_error(invoke(["verify", ckpt, other]), "not a model file")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"0")
    with pytest.raises(SfdaError, match="no sidecar"):
        from sfda_deploy.runtime.engine_file import read_sidecar

        read_sidecar(engine)
    plain = tmp_path / "plain.onnx"
    h = onnx.helper
    io = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 19, *SIZE]) for n in ("x", "y")]
    graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "plain", io[:1], io[1:])
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), str(plain))  # no metadata
    assert_user_error(invoke(["verify", ckpt, plain]), "no sfda-deploy metadata")


def test_calibration_stride_divides_and_bounds_memory():
    from sfda_deploy.export.calibration import calibration_stride

    # 2**19 pixels per chunk: 128x256 = 32768 px → at most 16 frames; 300 = 15 * 20 → 15 (16 does not divide)
    assert calibration_stride(300, (1, 3, 128, 256)) == 15
    assert calibration_stride(32, (1, 3, 128, 256)) == 16
    assert calibration_stride(7, (1, 3, 128, 256)) == 7     # fewer batches than the limit: one chunk
    assert calibration_stride(17, (1, 3, 128, 256)) == 1    # prime above the limit: one batch a chunk
    assert calibration_stride(300, (1, 3, 512, 1024)) == 1  # 524288 px: one frame per chunk
    assert calibration_stride(10, (2, 3, 128, 256)) == 5    # 65536 px per batch → at most 8 batches


def test_parity_reference_is_the_checkpoints_own_arithmetic(ckpt):
    # the torch side of every parity check runs the checkpoint as it is: no BatchNorm folded into the
    # convolutions (the runtime's CPU speed-up), no autocast
    import torch

    from sfda_deploy.checkpoint import load_model
    from sfda_deploy.export.verify import open_runner, torch_runner

    model, meta = load_model(ckpt)
    for runner in (torch_runner(model, meta, ckpt, "cpu"), open_runner(ckpt, "cpu")):
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in runner.backend.model.modules())


def test_parity_reference_runs_with_tf32_off(ckpt):
    """torch's default runs float32 convolutions in TF32 on CUDA; the reference turns it off while it runs
    (and only then: torch's settings are back afterwards)."""
    import numpy as np
    import torch

    from sfda_deploy.checkpoint import load_model
    from sfda_deploy.export.verify import open_runner, torch_runner

    model, meta = load_model(ckpt)
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append(
        (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)))
    before = (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    frames = np.zeros((1, *meta.input_size, 3), np.uint8)
    torch_runner(model, meta, ckpt, "cpu").run(frames)
    assert seen == [("ieee", "ieee")]
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before
    assert open_runner(ckpt, "cpu").backend.tf32 is False


def test_parity_gate_defaults_to_the_checkpoints_own_target_data(invoke, tmp_path):
    # no --verify-data: the val images of the data the checkpoint was adapted on (its provenance), so the
    # gate also reports mIoU on both sides; without that data here, generated frames (as before)
    import torch

    data = _write_frames(tmp_path / "target", 2, labels=True)
    torch.manual_seed(0)
    meta = ModelMeta(arch="tiny", input_size=SIZE).with_provenance(command="adapt", method="atp",
                                                                  data_root=str(data), split="train")
    ckpt = save_checkpoint(tmp_path / "adapted" / "model.safetensors", build_model("tiny", num_classes=19).eval(),
                           meta)
    r = invoke(["export", ckpt, "--name", "own-data"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "runs" / "export" / "own-data" / "report.json").read_text())
    assert report["verify_data"] == str(data / "leftImg8bit" / "val")
    assert report["parity"]["onnx_fp32"]["delta_miou"] is not None
    meta_gone = ModelMeta(arch="tiny", input_size=SIZE).with_provenance(command="adapt",
                                                                       data_root=str(tmp_path / "moved-away"))
    ckpt2 = save_checkpoint(tmp_path / "other" / "model.safetensors", build_model("tiny", num_classes=19).eval(),
                            meta_gone)
    r = invoke(["export", ckpt2, "--name", "gone"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "runs" / "export" / "gone" / "report.json").read_text())
    assert report["verify_data"].endswith("generated frames")
