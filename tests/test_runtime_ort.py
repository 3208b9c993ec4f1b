"""ONNX Runtime backend: I/O binding (device-resident inputs/outputs, run here on CPU), the TensorRT
provider's cache location and options, and the CPU/GPU package clash."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sfda_deploy import onnxrt
from sfda_deploy.errors import SfdaError
from sfda_deploy.runtime import ort as O
from tests.runtime_data import SIZE, frame_for, make_onnx


@pytest.mark.parametrize("dynamic", [True, False])
def test_io_binding_gives_what_session_run_gives(tmp_path, dynamic):
    """The CUDA path's binding code (inputs and outputs in torch tensors bound by pointer), on CPU."""
    path = make_onnx(tmp_path / "m.onnx", dynamic=dynamic)
    batch = 2 if dynamic else 1  # a static export has batch 1
    frames = np.stack([frame_for(i, SIZE) for i in range(batch)])
    plain = O.OrtBackend(path, "cpu", None, batch, threads=1)
    bound = O.OrtBackend(path, "cpu", None, batch, threads=1, io_binding=True)
    assert not plain.binding and bound.binding
    np.testing.assert_allclose(bound.outputs(bound.preprocess(frames)), plain.outputs(plain.preprocess(frames)),
                               rtol=1e-5, atol=1e-5)
    assert (bound.infer(bound.preprocess(frames)) == plain.infer(plain.preprocess(frames))).all()
    assert bound.infer(bound.preprocess(frames)).dtype == np.uint8


def test_tensorrt_provider_caches_live_next_to_the_model_keyed_like_engines():
    model = Path("/models/deeplab.onnx")
    cache = onnxrt.trt_cache_dir(model, "10.9.0.34", "NVIDIA A100-SXM4-80GB", "8.0", "ab12cd34ef56" + "0" * 52)
    assert cache == Path("/models/deeplab.ort-trt/nvidia-a100-sxm4-80gb-cc8.0-trt10.9.0.34-ab12cd34ef56")
    assert onnxrt.trt_cache_dir(model, "10.9.0.34", "NVIDIA A100-SXM4-80GB", "8.0", "ff" * 32) != cache  # new ONNX
    assert onnxrt.trt_cache_dir(model, "11.0.0", "NVIDIA A100-SXM4-80GB", "8.0", "ab12cd34ef56" + "0" * 52) != cache
    opts = onnxrt.trt_provider_options(cache, 1)
    assert opts == {"device_id": 1, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}


def test_both_onnx_runtimes_installed_is_named_with_the_fix(monkeypatch, tmp_path):
    assert onnxrt.both_runtimes_message({"onnxruntime": "1.22.0"}) is None
    assert onnxrt.both_runtimes_message({"onnxruntime-gpu": "1.22.0"}) is None
    msg = onnxrt.both_runtimes_message({"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"})
    assert "both onnxruntime 1.22.0 (CPU) and onnxruntime-gpu 1.22.0" in msg and "pip uninstall -y" in msg
    # a CUDA session that ended on CPU says so (rather than a generic "install onnxruntime-gpu")
    monkeypatch.setattr(onnxrt, "installed_distributions",
                        lambda names: {"onnxruntime": "1.22.0", "onnxruntime-gpu": "1.22.0"})
    with pytest.warns(UserWarning, match="both onnxruntime"):
        with pytest.raises(SfdaError, match="both onnxruntime 1.22.0"):
            onnxrt.create_session(make_onnx(tmp_path / "m.onnx"), "cuda")


@pytest.mark.parametrize("level,quantization,arch,size,device,expected,noted", [
    ("auto", None, "mobilenetv2_aspp", (1024, 2048), "cpu", "all", True),  # NCHWc faster for the real-time net
    ("auto", None, "deeplabv2_r101", (512, 1024), "cpu", "extended", True),  # 512*1024 pixels: the bound itself
    ("auto", None, "deeplabv2_r50", (1024, 2048), "cpu", "extended", True),
    ("auto", None, "deeplabv2_r101", (512, 1022), "cpu", "all", True),  # one column less than the bound
    ("auto", None, None, None, "cpu", "all", True),  # no metadata: ONNX Runtime's own default
    ("auto", None, "deeplabv2_r101", (1024, 2048), "cuda:0", "all", False),  # the rule is a CPU measurement
    ("all", None, "deeplabv2_r101", (1024, 2048), "cpu", "all", False),  # asked for: kept, nothing to say
    ("extended", "cpu-int8", "mobilenetv2_aspp", (512, 1024), "cpu", "extended", False),
    ("all", "trt-qdq", "mobilenetv2_aspp", (512, 1024), "cpu", "basic", True),  # fp16 scales: only basic loads
    ("auto", "trt-qdq", "mobilenetv2_aspp", (512, 1024), "cuda", "all", False),
])
def test_choose_optimization(level, quantization, arch, size, device, expected, noted):
    from sfda_deploy.runtime.ort_choice import choose_optimization

    picked, why = choose_optimization(level, quantization, arch, size, device)
    assert picked == expected
    assert (why is not None) == noted


def test_faster_on_cpu_note_only_where_torch_runs_a_checkpoint_on_cpu():
    from sfda_deploy.runtime.backends import faster_on_cpu_note

    assert "--int8-cpu" in faster_on_cpu_note("torch", "cpu", adaptable=False)
    assert faster_on_cpu_note("torch", "cpu", adaptable=True) is None  # segment --adapt needs torch
    assert faster_on_cpu_note("torch", "cuda:0", adaptable=False) is None
    assert faster_on_cpu_note("onnxruntime", "cpu", adaptable=False) is None


def test_faster_on_cpu_note_depends_on_native_bf16(monkeypatch):
    from sfda_deploy.runtime import backends

    monkeypatch.setattr(backends, "cpu_native_bf16", lambda: True)
    note = backends.faster_on_cpu_note("torch", "cpu", adaptable=False)
    assert "bf16" in note and "--int8-cpu" in note and "model.onnx)" not in note  # fp32 ONNX is slower there
    monkeypatch.setattr(backends, "cpu_native_bf16", lambda: False)
    note = backends.faster_on_cpu_note("torch", "cpu", adaptable=False)
    assert "bf16" not in note and "model.onnx" in note
