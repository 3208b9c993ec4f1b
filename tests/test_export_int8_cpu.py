"""``export --int8-cpu``: the INT8 ONNX for ONNX Runtime's CPU provider, its ΔmIoU gate, and how
segment/benchmark name the INT8 flavour they run."""
from __future__ import annotations

import json

import onnx
import pytest

from sfda_deploy.errors import SfdaError
from sfda_deploy.export import cpu_int8
from sfda_deploy.metadata import CPU_INT8, TRT_QDQ, quantization_of
from sfda_deploy.runtime.ort_choice import int8_note
from tests.conftest import assert_user_error
from tests.test_export import _only_run, _onnx_meta, _write_frames, ckpt  # noqa: F401  (ckpt: a fixture)


def test_export_int8_cpu_and_qdq_side_by_side(invoke, ckpt, tmp_path):  # noqa: F811
    calib = _write_frames(tmp_path / "calib", 4)
    with pytest.warns(UserWarning, match="calibrating INT8 on 4 frames"):
        result = invoke(["export", ckpt, "--int8", "--int8-cpu", "--calib-data", calib, "--calib-count", 4])
    assert result.exit_code == 0, result.output
    assert "ONNX int8 (ONNX Runtime CPU) vs torch" in result.output
    run = _only_run(tmp_path)
    cpu, qdq = run / "model_int8_cpu.onnx", run / "model_int8.onnx"
    assert _onnx_meta(cpu).extra["quantization"] == CPU_INT8 and _onnx_meta(cpu).extra["precision"] == "int8"
    assert _onnx_meta(qdq).extra["quantization"] == TRT_QDQ
    graph = onnx.load(str(cpu)).graph
    inits = {i.name: i for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points)  # U8 activations
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)  # no fp16 remainder on CPU
    report = json.loads((run / "report.json").read_text())
    assert report["files"]["int8_cpu_onnx"] == str(cpu)
    assert report["parity"]["onnx_int8_cpu"]["argmax_agreement"] > 90
    assert "run it:  sfda-deploy segment SOURCE --model " + str(cpu) in result.output

    from sfda_deploy.runtime.backends import load_backend

    backend = load_backend(str(cpu), "auto", "cpu", threads=1)
    try:
        assert backend.providers == ["CPUExecutionProvider"]
        assert any("[cpu-int8]" in note for note in backend.notes) and backend.optimization == "all"
    finally:
        backend.close()
    backend = load_backend(str(qdq), "auto", "cpu", threads=1)
    try:
        assert backend.optimization == "basic" and any("export --int8-cpu" in note for note in backend.notes)
    finally:
        backend.close()
    bench = invoke(["benchmark", run / "model.onnx", cpu, "--threads", 1, "--warmup", 0, "--iters", 1])
    assert bench.exit_code == 0, bench.output
    assert "note (model_int8_cpu.onnx): runs INT8 for ONNX Runtime's CPU provider" in bench.output


def test_int8_cpu_miou_gate_keeps_no_file(invoke, ckpt, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(cpu_int8, "INT8_MIOU_GATE", -1.0)  # any ΔmIoU, even 0, now fails the gate
    calib = _write_frames(tmp_path / "calib", 2)
    data = _write_frames(tmp_path / "val", 2, labels=True)
    with pytest.warns(UserWarning):
        result = invoke(["export", ckpt, "--int8-cpu", "--calib-data", calib, "--verify-data", data])
    assert result.exit_code == 2 and "Traceback" not in result.output  # after the parity bars: one error line
    assert result.stderr.strip().splitlines()[-1].startswith("error: ONNX int8 (ONNX Runtime CPU) changes mIoU by")
    assert not (_only_run(tmp_path) / "model_int8_cpu.onnx").exists()


def test_int8_cpu_needs_calibration_frames(invoke, ckpt):  # noqa: F811
    assert_user_error(invoke(["export", ckpt, "--int8-cpu"]), "--int8-cpu needs calibration frames")


def test_miou_gate_bounds():
    cpu_int8.check_miou("x", {"delta_miou": -0.5})  # the bound itself passes
    cpu_int8.check_miou("x", {"delta_miou": None})  # no labels: reported, not gated
    with pytest.raises(SfdaError, match=r"changes mIoU by \+0.51"):
        cpu_int8.check_miou("x", {"delta_miou": 0.51})


def test_quantization_flavour_and_note():
    assert quantization_of({"precision": "fp32"}) is None
    assert quantization_of({"precision": "int8"}) == TRT_QDQ  # files from before the CPU variant: Q/DQ
    assert quantization_of({"precision": "int8", "quantization": CPU_INT8}) == CPU_INT8
    assert int8_note(None, "cpu") is None
    assert "slower than the fp32" in int8_note(TRT_QDQ, "cpu")
    assert "slower" not in int8_note(TRT_QDQ, "cuda:0") and "[trt-qdq]" in int8_note(TRT_QDQ, "cuda:0")
    assert "slower" not in int8_note(CPU_INT8, "cpu") and "[cpu-int8]" in int8_note(CPU_INT8, "cpu")

