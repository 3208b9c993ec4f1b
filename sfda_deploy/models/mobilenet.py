"""``mobilenetv2_aspp``: a real-time segmentation net for Jetson-class devices (the demo's default).

MobileNetV2 inverted-residual encoder whose last two strided stages are dilated instead (output
stride 8, as DeepLabV3-MobileNetV2 does), followed by a light ASPP head (128 channels: a 1×1 branch,
two dilated depthwise-separable 3×3 branches and image pooling) and a 1×1 classifier.
About 2.05 M parameters at 19 classes with ``width=1.0``. Only plain ops (conv, BN, ReLU6, mean,
broadcast add, concat, resize) so it exports to ONNX opset 18 and TensorRT without plugins.
"""
from __future__ import annotations

import torch
from torch import nn

from sfda_deploy.models.base import SegmentationModel

# MobileNetV2 stages: (expansion t, channels c, blocks n, stride s), Sandler et al. 2018, Table 2.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping below 90 % (MobileNet's rule)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


def conv_bn_act(cin: int, cout: int, kernel: int = 1, stride: int = 1, dilation: int = 1, groups: int = 1,
                act: bool = True) -> nn.Sequential:
    """Conv (no bias) → BN (→ ReLU6). Padding keeps the size for odd kernels at any dilation."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, dilation * (kernel - 1) // 2, dilation, groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise (stride or dilation) → 1×1 linear projection, residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, dilation: int = 1):
        super().__init__()
        hidden = cin * expansion
        layers = [] if expansion == 1 else [conv_bn_act(cin, hidden)]
        layers += [conv_bn_act(hidden, hidden, 3, stride, dilation, groups=hidden),
                   conv_bn_act(hidden, cout, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


def separable(cin: int, cout: int, dilation: int) -> nn.Sequential:
    """Depthwise 3×3 (dilated) → pointwise 1×1: the cheap ASPP branch."""
    return nn.Sequential(conv_bn_act(cin, cin, 3, dilation=dilation, groups=cin), conv_bn_act(cin, cout))


class LightASPP(nn.Module):
    """ASPP with 1×1, two dilated separable 3×3 and an image-pooling branch, fused by a 1×1 conv.

    The pooled branch is constant over space, so its share of the fusing 1×1 conv is added by
    broadcasting instead of being tiled and concatenated (same function, no Expand in the graph).
    It has a bias and no BN: BN over a 1×1 map fails at batch 1 in train mode.
    """

    def __init__(self, cin: int, channels: int = 128, dilations=(6, 12)):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_act(cin, channels)] + [separable(cin, channels, d) for d in dilations])
        self.pool = nn.Sequential(nn.Conv2d(cin, channels, 1), nn.ReLU6(inplace=True))
        self.project = nn.Conv2d(channels * (len(dilations) + 1), channels, 1, bias=False)
        self.project_pool = nn.Conv2d(channels, channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(channels)
        self.project_act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,cin,h,w]`` → ``[B,channels,h,w]``."""
        spatial = self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
        pooled = self.project_pool(self.pool(x.mean(dim=(2, 3), keepdim=True)))  # [B,channels,1,1]
        return self.project_act(self.project_bn(spatial + pooled))


class MobileNetV2ASPP(SegmentationModel):
    """MobileNetV2 encoder (output stride 8) + light ASPP + 1×1 classifier.

    Args:
        num_classes: output channels C.
        width: MobileNetV2 width multiplier (0.5, 0.75, 1.0, ...).
        aspp_channels: channels of the ASPP head.
        dropout: dropout before the classifier (train mode only).
        align_corners: logits upsampling mode.
    """

    output_stride = 8
    classifier_weight = "classifier.weight"

    def __init__(self, num_classes: int = 19, width: float = 1.0, aspp_channels: int = 128,
                 dropout: float = 0.1, align_corners: bool = False):
        super().__init__(num_classes, align_corners)
        channels = make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn_act(3, channels, 3, stride=2)]
        stride, dilation = 2, 1
        for t, c, n, s in STAGES:
            cout = make_divisible(c * width)
            # Past output stride 8, trade the stride for dilation (keeps the receptive field).
            if s == 2 and stride == 8:
                first_dilation, dilation, s = dilation, dilation * 2, 1
            else:
                first_dilation = dilation
                stride *= s
            for i in range(n):
                layers.append(InvertedResidual(channels, cout, s if i == 0 else 1, t,
                                               first_dilation if i == 0 else dilation))
                channels = cout
        self.encoder = nn.Sequential(*layers)
        self.feature_channels = channels
        self.aspp_head = LightASPP(channels, aspp_channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Residual blocks start as identities (last BN γ = 0): stable training from scratch.
        for m in self.encoder.modules():
            if isinstance(m, InvertedResidual) and m.use_residual:
                nn.init.zeros_(m.conv[-1][1].weight)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` → encoder output ``[B,320·width,H/8,W/8]`` (rounded up)."""
        return self.encoder(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Features → low-resolution logits ``[B,C,h,w]``."""
        return self.classifier(self.dropout(self.aspp_head(features)))
