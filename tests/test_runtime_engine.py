"""TensorRT backend guards: sidecar, build key, GPU check, profile check (fake engine), real GPU run."""
from __future__ import annotations

import json

import pytest
import torch

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.runtime import engine as eng
from sfda_deploy.runtime import engine_file as EF

RUNNING = {"tensorrt": "10.7.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_same_build_key_runs_without_notes(tmp_path):
    assert EF.check_engine_key(tmp_path / "m.engine", dict(RUNNING), RUNNING) == []


@pytest.mark.parametrize("field, value, fragment", [
    ("tensorrt", "8.6.1", "TensorRT 8.6.1 (built) vs 10.7.0 (here)"),
    ("compute_capability", "8.6", "compute capability 8.6 (built) vs 9.0 (here)"),
])
def test_engine_built_elsewhere_is_refused(tmp_path, field, value, fragment):
    key = {**RUNNING, field: value}
    with pytest.raises(SfdaError, match="built elsewhere") as e:
        EF.check_engine_key(tmp_path / "m.engine", key, RUNNING)
    assert fragment in str(e.value) and "sfda-deploy export" in str(e.value)


def test_other_gpu_of_same_architecture_is_a_note(tmp_path):
    notes = EF.check_engine_key(tmp_path / "m.engine", {**RUNNING, "gpu": "NVIDIA H100 PCIe"}, RUNNING)
    assert notes == ["m.engine: GPU NVIDIA H100 PCIe (built) vs NVIDIA H100 80GB HBM3 (here)"]
    notes = EF.check_engine_key(tmp_path / "m.engine", {"gpu": RUNNING["gpu"]}, RUNNING)
    assert len(notes) == 2 and all("does not record" in n for n in notes)


def test_sidecar_errors(tmp_path):
    engine = tmp_path / "m.engine"
    with pytest.raises(SfdaError, match="no sidecar m.engine.json"):
        EF.read_sidecar(engine)
    EF.sidecar_path(engine).write_text("{not json")
    with pytest.raises(SfdaError, match="not readable JSON"):
        EF.read_sidecar(engine)
    EF.sidecar_path(engine).write_text(json.dumps({"cache_key": {}}))
    with pytest.raises(SfdaError, match="no sfda-deploy metadata"):
        EF.read_sidecar(engine)
    meta = ModelMeta(arch="tiny", input_size=(32, 64))
    EF.sidecar_path(engine).write_text(json.dumps({"meta": meta.to_dict(), "cache_key": RUNNING}))
    assert EF.read_sidecar(engine) == (meta, RUNNING)


def _guard_tensorrt_import(monkeypatch):
    """Pretend tensorrt is installed, and fail the test if anything imports it."""
    import builtins
    import importlib.util

    real_import, real_find = builtins.__import__, importlib.util.find_spec

    def guarded(name, *a, **kw):
        assert name != "tensorrt", "tensorrt must not be imported without a GPU"
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", guarded)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorrt" else real_find(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(eng, "nvidia_gpu_present", lambda: False)


def test_no_gpu_means_no_tensorrt_import(monkeypatch):
    _guard_tensorrt_import(monkeypatch)
    with pytest.raises(SfdaError, match="needs a CUDA GPU"):
        eng.import_tensorrt("cuda:0")


def test_engine_without_gpu_is_refused_before_tensorrt(monkeypatch, tmp_path):
    """Opening an engine (segment, verify, export's gate) goes through the same guard, after the sidecar."""
    from sfda_deploy.runtime.backends import load_backend

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    meta = ModelMeta(arch="tiny", input_size=(32, 64))
    EF.sidecar_path(engine).write_text(json.dumps({"meta": meta.to_dict(), "cache_key": RUNNING}))
    _guard_tensorrt_import(monkeypatch)
    with pytest.raises(SfdaError, match="needs a CUDA GPU"):
        load_backend(str(engine), "auto", "cuda")


def test_missing_tensorrt_is_named(monkeypatch):
    import importlib.util

    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorrt" else real_find(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SfdaError, match=r"needs TensorRT, which is not installed: pip install 'sfda-deploy\[trt\]'"):
        eng.import_tensorrt("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # both missing: both are named
    monkeypatch.setattr(eng, "nvidia_gpu_present", lambda: False)
    with pytest.raises(SfdaError, match=r"needs a CUDA GPU \(and TensorRT, not installed either: pip install"):
        eng.import_tensorrt("cuda:0")


class FakeEngine:
    """The slice of ``trt.ICudaEngine``/``IExecutionContext`` that ``_bind`` uses."""

    def __init__(self, accept: bool = True):
        self.shapes, self.accept, self.memory, self.profiles = {}, accept, None, []

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 3, 16, 16), (1, 3, 32, 64), (2, 3, 64, 128)]

    def set_optimization_profile_async(self, index, stream):
        self.profiles.append((index, stream))
        return True

    def set_input_shape(self, name, shape):
        if self.accept:
            self.shapes[name] = tuple(shape)
        return self.accept

    def update_device_memory_size_for_shapes(self):
        b, _, h, w = self.shapes["images"]
        return 1000 * b * h * w  # activation memory grows with the shape

    def set_device_memory(self, ptr, size):
        self.memory = (ptr, size)

    def get_tensor_shape(self, name):
        b, _, h, w = self.shapes["images"]
        return (b, 19, h, w)

    def set_tensor_address(self, name, ptr):
        self.shapes[name + "_ptr"] = ptr


def _fake_backend(accept: bool = True):
    import types

    backend = eng.TensorRTBackend.__new__(eng.TensorRTBackend)  # no TensorRT, no GPU
    backend.engine = backend.context = FakeEngine(accept)
    backend.input_name, backend.output_name = "images", "logits"
    backend.output_dtype, backend.device = torch.float32, "cpu"
    backend._user_managed, backend._workspace = True, None
    backend._stream = types.SimpleNamespace(cuda_stream=7, synchronize=lambda: None)
    return backend


def test_dynamic_shape_is_set_and_checked_against_the_profile():
    backend = _fake_backend()
    backend._bind((2, 3, 48, 96), dynamic=True)
    assert backend.context.shapes["images"] == (2, 3, 48, 96)
    assert tuple(backend._out.shape) == (2, 19, 48, 96)
    assert backend.context.shapes["logits_ptr"] == backend._out.data_ptr()
    with pytest.raises(SfdaError, match=r"outside the engine's profile \(1, 3, 16, 16\)..\(2, 3, 64, 128\)"):
        backend._bind((1, 3, 128, 256), dynamic=True)


def test_activation_memory_is_allocated_for_the_bound_shape_not_the_profile_max():
    backend = _fake_backend()
    backend._bind((1, 3, 16, 32), dynamic=True)
    assert backend.context.profiles == [(0, 7)]  # profile 0 selected on the backend's own stream
    assert backend.context.memory == (backend._workspace.data_ptr(), 1000 * 16 * 32)
    assert backend._workspace.numel() == 1000 * 16 * 32  # not the (2, 3, 64, 128) max: 16x less
    static = _fake_backend()
    static.context.shapes["images"] = (1, 3, 16, 32)
    static._bind((1, 3, 16, 32), dynamic=False)
    assert static.context.profiles == [] and static.context.memory[1] == 1000 * 16 * 32


def test_a_shape_tensorrt_refuses_is_an_error_not_ignored():
    with pytest.raises(SfdaError, match=r"refuses input shape \(1, 3, 32, 64\)"):
        _fake_backend(accept=False)._bind((1, 3, 32, 64), dynamic=True)


def test_engine_dtypes_include_bf16_and_fp8_and_name_the_rest():
    import types

    assert eng.torch_dtype(types.SimpleNamespace(name="BF16"), "logits", "m.engine") is torch.bfloat16
    assert eng.torch_dtype(types.SimpleNamespace(name="FP8"), "logits", "m.engine") is torch.float8_e4m3fn
    assert eng.torch_dtype(types.SimpleNamespace(name="UINT8"), "mask", "m.engine") is torch.uint8
    with pytest.raises(SfdaError, match="m.engine: tensor 'logits' is FP4"):
        eng.torch_dtype(types.SimpleNamespace(name="FP4"), "logits", "m.engine")


def test_gpu_and_tensorrt_present_but_cpu_torch_says_exactly_that(tmp_path):
    (tmp_path / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    assert eng.nvidia_gpu_present(tmp_path / "dev", tmp_path / "nv_tegra_release")  # a Jetson: no nvidia-smi
    assert not eng.nvidia_gpu_present(tmp_path / "dev", tmp_path / "missing")
    msg = eng.no_cuda_message("--trt", "fix", True, True, "2.13.0+cpu", None)
    assert "TensorRT is installed and an NVIDIA GPU is present, but torch 2.13.0+cpu is a CPU-only build" in msg
    assert "make install" in msg
    msg = eng.no_cuda_message("--trt", "fix", True, True, "2.13.0+cu130", "13.0")
    assert "built for CUDA 13.0" in msg and "driver" in msg
    assert "none is visible" in eng.no_cuda_message("--trt", "fix", True, False, "2.13.0+cpu", None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_fast_path_matches_fp32(tmp_path):
    """fp16 autocast + channels_last + CUDA graphs give (nearly) the fp32 labels."""
    import numpy as np

    from sfda_deploy.runtime.torch_backend import TorchBackend
    from tests.runtime_data import tiny_model

    meta = ModelMeta(arch="tiny", input_size=(64, 128))
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 128, 3), dtype=np.uint8)
    fast = TorchBackend(tiny_model(), meta, "cuda:0", batch=2)
    slow = TorchBackend(tiny_model(), meta, "cuda:0", batch=2, half=False, channels_last=False,
                        cuda_graphs=False)
    a, b = fast.infer(fast.preprocess(frames)), slow.infer(slow.preprocess(frames))
    again = fast.infer(fast.preprocess(frames[::-1].copy()))  # graph replay with new data
    assert (a == b).mean() > 0.99 and (again[::-1] == a).mean() > 0.99
    assert fast.notes == []  # the graph was captured
