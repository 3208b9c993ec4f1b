"""bf16 autocast of the torch backend on CPU: when it is on, what it reports, and that it stays close to fp32."""
from __future__ import annotations

import numpy as np
import torch

from sfda_deploy.device import cpu_native_bf16
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.runtime.backends import load_backend
from sfda_deploy.runtime.torch_backend import REFERENCE_OPTIONS, TorchBackend


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_bf16, without, amx = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_vnni\n")
    amx.write_text("flags\t\t: fpu amx_tile amx_bf16 amx_int8\n")
    assert cpu_native_bf16(str(with_bf16)) is True and cpu_native_bf16(str(amx)) is True
    assert cpu_native_bf16(str(without)) is False
    assert cpu_native_bf16(str(tmp_path / "missing")) is False  # not Linux: no bf16


def _model():
    torch.manual_seed(0)
    return build_model("tiny", num_classes=19).eval(), ModelMeta(arch="tiny", input_size=(32, 64))


def test_bf16_backend_says_so_and_agrees_with_fp32():
    model, meta = _model()
    bf16 = TorchBackend(model, meta, "cpu", cpu_bf16=True)
    fp32 = TorchBackend(model, meta, "cpu", cpu_bf16=False)
    assert "bf16 autocast" in bf16.providers[0] and "channels_last" in bf16.providers[0]
    assert "bf16" not in fp32.providers[0]
    frames = np.random.default_rng(0).integers(0, 256, (1, 32, 64, 3), dtype=np.uint8)
    a, b = bf16.outputs(bf16.preprocess(frames)), fp32.outputs(fp32.preprocess(frames))
    assert a.dtype == np.float32 and a.shape == b.shape
    # bf16 keeps 8 bits of mantissa: logits within a few percent of their range, not bit-equal
    scale = float(np.abs(b).max())
    assert 0 < float(np.abs(a - b).max()) < 0.05 * scale
    labels = bf16.infer(bf16.preprocess(frames))
    assert labels.shape == (1, 32, 64) and labels.dtype == np.uint8


def test_default_follows_the_cpu_and_reference_and_adapt_stay_fp32(tmp_path):
    from sfda_deploy.checkpoint import save_checkpoint

    model, meta = _model()
    assert TorchBackend(model, meta, "cpu").bf16 is cpu_native_bf16()
    assert REFERENCE_OPTIONS["cpu_bf16"] is False
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, meta)
    assert load_backend(str(path), reference=True).bf16 is False
    assert load_backend(str(path), adaptable=True).bf16 is False
