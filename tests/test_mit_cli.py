"""Issue 27 on the command line: the whole flow on ``segformer_b0`` (tiny generated data), and the bad
checkpoints of the MiT layouts (one line, exit 2, nothing written)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sfda_deploy.models import build_model
from tests import fixtures_data as fx
from tests.conftest import assert_user_error

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
SIZE = (64, 96)


def _ok(result):
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow  # end to end (about a minute): left out by `make test-fast`
def test_segformer_b0_whole_cli_flow(invoke, tmp_path):
    data = tmp_path / "cs"
    for split in ("train", "val"):
        fx.write_cityscapes(data, split=split, n=2, size=SIZE)
    common = ["--target", "cityscapes", "--data-root", data]
    _ok(invoke(["train-source", *common, "--arch", "segformer_b0", "--iters", 3, "--batch", 2, "--crop", 64, 64,
                "--eval-every", 0, "--workers", 0, "--name", "src"]))
    source = tmp_path / "runs" / "train-source" / "src" / "model.safetensors"
    assert "mIoU" in _ok(invoke(["evaluate", "--checkpoint", source, *common, "--split", "val", "--name", "ev"]))

    out = _ok(invoke(["adapt", *common, "--source", source, "--method", "adabn", "--name", "adabn"]))
    assert ("AdaBN can reach only the running statistics of the model's 1 BatchNorm layer (in decode_head.); its "
            "30 LayerNorm layers have none") in out
    out = _ok(invoke(["adapt", *common, "--source", source, "--method", "atp", "--stages", "A", "--iters", 2,
                      "--batch", 1, "--workers", 0, "--eval-every", 0, "--name", "atp"]))
    metrics = json.loads((tmp_path / "runs" / "adapt" / "atp" / "metrics.json").read_text())
    assert metrics["selection"]["baseline"] is not None  # AdaBN on the head's BatchNorms is the baseline
    adapted = tmp_path / "runs" / "adapt" / "atp" / "model.safetensors"
    assert adapted.is_file()

    _ok(invoke(["export", adapted, "--imgsz", *SIZE, "--fp16", "--name", "ex"]))
    report = json.loads((tmp_path / "runs" / "export" / "ex" / "report.json").read_text())
    assert report["passed"] and report["settings"]["opset"] == 18
    assert report["parity"]["onnx_fp32"]["argmax_agreement"] >= 99.99
    assert "delta_miou" in report["parity"]["onnx_fp16"]  # fp16 fidelity is reported
    onnx_path = Path(report["files"]["onnx"])

    frames = data / "leftImg8bit" / "val" / "aachen"
    out = _ok(invoke(["segment", frames, "--model", adapted, "--adapt", "tent", "--adapt-every", 1, "--threads", 1,
                      "--name", "tent"]))
    assert "--adapt tent trains the affine parameters of the model's 30 LayerNorm and 1 BatchNorm layers" in out
    summary = json.loads((tmp_path / "runs" / "segment" / "tent" / "summary.json").read_text())
    assert summary["adaptation"]["updates"] >= 1
    out = _ok(invoke(["segment", frames, "--model", adapted, "--adapt", "bnstats", "--threads", 1, "--name", "bn"]))
    assert "--adapt bnstats can reach only the running statistics of the model's 1 BatchNorm layer" in out
    _ok(invoke(["segment", frames, "--model", onnx_path, "--threads", 1, "--name", "onnx"]))
    _ok(invoke(["benchmark", "--model", onnx_path, "--warmup", 1, "--iters", 3, "--threads", 1, "--name", "bench"]))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RTX, reason="tensorrt-rtx is not installed (pip install 'sfda-deploy[trt-rtx]'; "
                                        "make test installs it): the CPU parse/build check cannot run")
def test_segformer_onnx_fp32_and_fp16_build_with_tensorrt_rtx(tmp_path):
    import tensorrt_rtx

    from sfda_deploy.export import tensorrt as T
    from sfda_deploy.export.onnx import convert_fp16, export_module, save_onnx
    from sfda_deploy.metadata import ModelMeta

    torch.manual_seed(0)
    model = build_model("segformer_b0", num_classes=19).eval()
    meta = ModelMeta(arch="segformer_b0", input_size=SIZE)
    fp32, fp16 = tmp_path / "segformer.onnx", tmp_path / "segformer_fp16.onnx"
    save_onnx(export_module(model, SIZE, 1, False, 18, "logits", "int32"), meta, fp32)
    convert_fp16(fp32, fp16, meta)
    for path in (fp32, fp16):
        plan = T.build_serialized(tensorrt_rtx, path, T.profile_shapes(SIZE, 1, False, 32), workspace_gb=0.25)
        assert len(plan) > 1000, path


# ---- bad checkpoints ----------------------------------------------------------------------------------
def _save(path: Path, arch: str, classes: int = 19, rename=("decode_head.classifier.", "decode_head.conv_seg.")):
    state = {k.replace(*rename): v for k, v in build_model(arch, classes).state_dict().items()}
    torch.save({"state_dict": state, "meta": {}}, path)
    return path


def _import(invoke, path, arch, *extra):
    return invoke(["import-pth", path, "--arch", arch, "--normalization", "imagenet", *extra])


def test_a_segformer_checkpoint_as_daformer_is_one_line(invoke, tmp_path):
    path = _save(tmp_path / "segformer.b0.pth", "segformer_b0", rename=("decode_head.classifier.", "decode_head.linear_pred."))
    assert_user_error(_import(invoke, path, "daformer_mitb5"), "holds a NVlabs SegFormer checkpoint (segformer), not a "
                      "daformer model: use --arch segformer_b5")
    assert not (tmp_path / "runs").exists()


def test_a_mitb2_file_as_segformer_b5_is_one_line(invoke, tmp_path):
    path = _save(tmp_path / "segformer.b2.pth", "segformer_b2", rename=("decode_head.classifier.", "decode_head.linear_pred."))
    assert_user_error(_import(invoke, path, "segformer_b5"), "holds MiT-B2 weights (widths 64/128/320/512, depths "
                      "3/4/6/3) but --arch segformer_b5 is MiT-B5: use --arch segformer_b2")
    assert not (tmp_path / "runs").exists()


def test_truncated_wrong_class_count_and_prefix_are_one_line(invoke, tmp_path):
    path = _save(tmp_path / "daformer.pth", "daformer_mitb0")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[:-4000])
    assert_user_error(_import(invoke, cut, "daformer_mitb0"), "truncated")
    st = tmp_path / "cut.safetensors"
    st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1")
    assert_user_error(_import(invoke, st, "segformer_b0"), "not a readable .safetensors", "truncated")
    assert_user_error(_import(invoke, path, "daformer_mitb0", "--num-classes", 16),
                      "predicts 19 classes (decode_head.classifier.weight) but 16 were asked for")
    assert_user_error(_import(invoke, path, "daformer_mitb0", "--pth-prefix", "ema_model"),
                      "not a UDA trainer checkpoint", "drop --pth-prefix")
    assert not (tmp_path / "runs").exists()
    # a layout of no release: the strict load names the first missing and unexpected keys
    torch.save({"encoder.w": torch.zeros(2)}, tmp_path / "foreign.pth")
    assert_user_error(_import(invoke, tmp_path / "foreign.pth", "segformer_b0", "--num-classes", 19),
                      "missing (e.g. backbone.patch_embed1",
                      "unexpected (e.g. encoder.w)")
    out = _ok(_import(invoke, path, "daformer_mitb0", "--name", "ok"))
    assert "(DAFormer/ATP (mmseg 0.x) layout) as daformer_mitb0" in out
