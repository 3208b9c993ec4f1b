"""Conv+BatchNorm folding of the torch backend (CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.runtime.fusion import fold_conv_bn
from sfda_deploy.runtime.torch_backend import TorchBackend


def _with_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine terms, so a wrong fold shows."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.mark.parametrize("arch, left", [
    ("tiny", []),
    ("mobilenetv2_aspp", ["aspp_head.project_bn"]),  # it follows spatial + pooled, not a convolution
])
def test_fold_keeps_the_output_at_any_size(arch, left):
    model = _with_statistics(build_model(arch, num_classes=19))
    batchnorms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded, count = fold_conv_bn(model)
    assert count == batchnorms - len(left) > 0
    assert [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)] == left
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    with torch.no_grad():
        for size in ((32, 64), (48, 40)):  # not baked in by tracing
            x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
            ref, out = model(x), folded(x)
            assert out.shape == ref.shape == (2, 19, *size)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_fold_leaves_untraceable_models_and_refuses_training_mode():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                return self.bn(self.conv(x))
            return self.conv(x)

    model = Branchy().eval()
    assert fold_conv_bn(model) == (model, 0)
    with pytest.raises(ValueError, match="eval mode"):
        fold_conv_bn(Branchy().train())


def test_torch_backend_folds_on_cpu_and_says_so():
    model = _with_statistics(build_model("tiny", num_classes=19))
    meta = ModelMeta(arch="tiny", input_size=(32, 64))
    # fp32 both (bf16 autocast, on by default on CPUs with native bf16, is tested in test_runtime_bf16.py)
    folded = TorchBackend(model, meta, "cpu", cpu_bf16=False)
    plain = TorchBackend(model, meta, "cpu", fold_bn=False, cpu_bf16=False)
    assert "BatchNorms folded" in folded.providers[0] and "folded" not in plain.providers[0]
    frames = np.random.default_rng(0).integers(0, 256, (1, 32, 64, 3), dtype=np.uint8)
    x = folded.preprocess(frames)
    torch.testing.assert_close(torch.from_numpy(folded.outputs(x)), torch.from_numpy(plain.outputs(x)),
                               rtol=1e-4, atol=1e-4)
