"""TensorRT backend guards: sidecar, build key, GPU check, profile check (fake engine), real GPU run."""
from __future__ import annotations

import json

import pytest
import torch

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.runtime import engine as eng

RUNNING = {"tensorrt": "10.7.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_same_build_key_runs_without_notes(tmp_path):
    assert eng.check_engine_key(tmp_path / "m.engine", dict(RUNNING), RUNNING) == []


@pytest.mark.parametrize("field, value, fragment", [
    ("tensorrt", "8.6.1", "TensorRT 8.6.1 (built) vs 10.7.0 (here)"),
    ("compute_capability", "8.6", "compute capability 8.6 (built) vs 9.0 (here)"),
])
def test_engine_built_elsewhere_is_refused(tmp_path, field, value, fragment):
    key = {**RUNNING, field: value}
    with pytest.raises(SfdaError, match="built elsewhere") as e:
        eng.check_engine_key(tmp_path / "m.engine", key, RUNNING)
    assert fragment in str(e.value) and "sfda-deploy export" in str(e.value)


def test_other_gpu_of_same_architecture_is_a_note(tmp_path):
    notes = eng.check_engine_key(tmp_path / "m.engine", {**RUNNING, "gpu": "NVIDIA H100 PCIe"}, RUNNING)
    assert notes == ["m.engine: GPU NVIDIA H100 PCIe (built) vs NVIDIA H100 80GB HBM3 (here)"]
    notes = eng.check_engine_key(tmp_path / "m.engine", {"gpu": RUNNING["gpu"]}, RUNNING)
    assert len(notes) == 2 and all("does not record" in n for n in notes)


def test_sidecar_errors(tmp_path):
    engine = tmp_path / "m.engine"
    with pytest.raises(SfdaError, match="no sidecar m.engine.json"):
        eng.read_sidecar(engine)
    eng.sidecar_path(engine).write_text("{not json")
    with pytest.raises(SfdaError, match="not readable JSON"):
        eng.read_sidecar(engine)
    eng.sidecar_path(engine).write_text(json.dumps({"cache_key": {}}))
    with pytest.raises(SfdaError, match="no sfda-deploy metadata"):
        eng.read_sidecar(engine)
    meta = ModelMeta(arch="tiny", input_size=(32, 64))
    eng.sidecar_path(engine).write_text(json.dumps({"meta": meta.to_dict(), "cache_key": RUNNING}))
    assert eng.read_sidecar(engine) == (meta, RUNNING)


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
    eng.sidecar_path(engine).write_text(json.dumps({"meta": meta.to_dict(), "cache_key": RUNNING}))
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
    with pytest.raises(SfdaError, match=r"needs a CUDA GPU \(and TensorRT, not installed either: pip install"):
        eng.import_tensorrt("cuda:0")


class FakeEngine:
    """The slice of ``trt.ICudaEngine``/``IExecutionContext`` that ``_bind`` uses."""

    def __init__(self):
        self.shapes = {}

    def get_tensor_profile_shape(self, name, profile):
        return [(1, 3, 16, 16), (1, 3, 32, 64), (2, 3, 64, 128)]

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        b, _, h, w = self.shapes["images"]
        return (b, 19, h, w)

    def set_tensor_address(self, name, ptr):
        self.shapes[name + "_ptr"] = ptr


def _fake_backend():
    backend = eng.TensorRTBackend.__new__(eng.TensorRTBackend)  # no TensorRT, no GPU
    backend.engine = backend.context = FakeEngine()
    backend.input_name, backend.output_name = "images", "logits"
    backend.output_dtype, backend.device = torch.float32, "cpu"
    return backend


def test_dynamic_shape_is_set_and_checked_against_the_profile():
    backend = _fake_backend()
    backend._bind((2, 3, 48, 96), dynamic=True)
    assert backend.context.shapes["images"] == (2, 3, 48, 96)
    assert tuple(backend._out.shape) == (2, 19, 48, 96)
    assert backend.context.shapes["logits_ptr"] == backend._out.data_ptr()
    with pytest.raises(SfdaError, match=r"outside the engine's profile \(1, 3, 16, 16\)..\(2, 3, 64, 128\)"):
        backend._bind((1, 3, 128, 256), dynamic=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_fast_path_matches_fp32(tmp_path):
    """fp16 autocast + channels_last + CUDA graphs give (nearly) the fp32 labels."""
    import numpy as np

    from sfda_deploy.runtime.backends import TorchBackend
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
