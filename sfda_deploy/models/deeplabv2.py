"""DeepLabV2 (ResNet-101/50 backbone, ASPP-sum classifier) in the AdaptSegNet checkpoint layout.

The source-only checkpoints that the SFDA papers publish (LDBE, IAST/HIAST and CPSL warm-ups, the
AdaptSegNet lineage) all use this module tree, so its state-dict keys are the published ones:
``conv1``, ``bn1``, ``layer1..layer4`` (``layerN.i.conv1..3``, ``bn1..3``, ``downsample.0/1``) and
``layer5.conv2d_list.0..3`` (plus ``layer6`` in the multi-level variant). See
docs/models.md. Differences from torchvision's ResNet are deliberate and needed for the
published weights to compute what they were trained to: the stride sits on the 1×1 ``conv1`` of a
bottleneck, the stem max-pool uses ``ceil_mode=True``, and layer3/layer4 are dilated (2/4) so the
output stride is 8.
"""
from __future__ import annotations

import torch
from torch import nn

from sfda_deploy.errors import SfdaError
from sfda_deploy.models.base import SegmentationModel

DILATIONS = (6, 12, 18, 24)  # of the four 3×3 branches of the classifier


class Bottleneck(nn.Module):
    """ResNet bottleneck, Caffe variant: the stride is on the 1×1 ``conv1``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ClassifierModule(nn.Module):
    """``conv2d_list``: four dilated 3×3 convs ``in_channels → C`` with bias, outputs summed."""

    def __init__(self, in_channels: int, num_classes: int, dilations=DILATIONS):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)  # as in the lineage: small logits at start
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,in,h,w]`` → ``[B,C,h,w]``."""
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(SegmentationModel):
    """DeepLabV2 with a ResNet bottleneck backbone, output stride 8.

    Args:
        num_classes: output channels C.
        align_corners: logits upsampling; this lineage uses True (ATP/DAFormer code uses False).
        freeze_bn: BN affine parameters get ``requires_grad=False``, as in the published training
            code (running statistics still update in train mode; call ``.eval()`` to fix them).
        multi_level: two classifiers, ``layer5`` and ``layer6``: the AdaptSegNet "multi" variant has
            ``layer5`` on layer3 (1024 ch) and ``layer6`` on layer4 (2048 ch).
        layer5_channels: with ``multi_level``, 1024 (``layer5`` on layer3, AdaptSegNet) or 2048 (both heads
            on layer4: LDBE's ``model/DeeplabV2.py`` source/teacher, which predicts with ``layer5``).
        prediction_head: which classifier gives the prediction in the multi-level variant:
            ``"layer6"`` (layer4 features; AdaptSegNet/ADVENT evaluate this one) or ``"layer5"`` (default
            when both heads sit on layer4, as LDBE's teacher forward). Must be ``"layer5"`` (the only
            head) when ``multi_level`` is False.
    """

    blocks: tuple[int, int, int, int] = (3, 4, 23, 3)
    output_stride = 8
    classifier_weight = "layer5.conv2d_list.0.weight"

    def __init__(self, num_classes: int = 19, align_corners: bool = True, freeze_bn: bool = True,
                 multi_level: bool = False, prediction_head: str | None = None, layer5_channels: int = 1024):
        super().__init__(num_classes, align_corners)
        if layer5_channels not in (1024, 2048):
            raise SfdaError(f"layer5_channels {layer5_channels} is not 1024 (on layer3) or 2048 (on layer4)")
        twin = multi_level and layer5_channels == 2048
        prediction_head = prediction_head or ("layer6" if multi_level and not twin else "layer5")
        valid = ("layer5", "layer6") if multi_level else ("layer5",)
        if prediction_head not in valid:
            raise SfdaError(f"prediction_head '{prediction_head}' is not valid with multi_level={multi_level}: "
                            f"use one of {', '.join(valid)}")
        self.multi_level = multi_level
        self.prediction_head = prediction_head
        self._layer5_on_layer3 = multi_level and not twin
        # Features are the input of the prediction head: layer4, or layer3 for a layer5 multi-level head.
        self._head_on_layer3 = self._layer5_on_layer3 and prediction_head == "layer5"
        self.feature_channels = 1024 if self._head_on_layer3 else 2048

        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self._inplanes = 64
        self.layer1 = self._make_layer(64, self.blocks[0])
        self.layer2 = self._make_layer(128, self.blocks[1], stride=2)
        self.layer3 = self._make_layer(256, self.blocks[2], dilation=2)
        self.layer4 = self._make_layer(512, self.blocks[3], dilation=4)
        if multi_level:
            self.layer5 = ClassifierModule(1024 if self._layer5_on_layer3 else 2048, num_classes)
            self.layer6 = ClassifierModule(2048, num_classes)
        else:
            self.layer5 = ClassifierModule(2048, num_classes)
        self._init_backbone()
        if freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        # The published layout also builds a projection when the layer is dilated.
        if stride != 1 or self._inplanes != planes * 4 or dilation in (2, 4):
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        layers = [Bottleneck(self._inplanes, planes, stride, dilation, downsample)]
        self._inplanes = planes * 4
        layers += [Bottleneck(self._inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_backbone(self) -> None:
        for name, m in self.named_modules():
            if name.startswith(("layer5", "layer6")):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _layer3(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` → input of the prediction head ``[B,2048,H/8,W/8]`` (layer4; 1024/layer3 for a
        multi-level model predicting with ``layer5``)."""
        x = self._layer3(x)
        return x if self._head_on_layer3 else self.layer4(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Features → low-resolution logits ``[B,C,h,w]`` of the prediction head."""
        return getattr(self, self.prediction_head)(features)

    def forward_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-level only: (``layer5`` logits on layer3 — or layer4 when both heads sit there —,
        ``layer6`` logits on layer4), both ``[B,C,h,w]``."""
        if not self.multi_level:
            raise SfdaError("forward_levels needs a multi-level model: build it with multi_level=True")
        f3 = self._layer3(x)
        f4 = self.layer4(f3)
        return self.layer5(f3 if self._layer5_on_layer3 else f4), self.layer6(f4)

    def is_head_parameter(self, name: str) -> bool:
        return name.startswith(("layer5", "layer6"))

    @staticmethod
    def kwargs_from_state(state: dict[str, torch.Tensor]) -> dict:
        """Builder options implied by a checkpoint: a ``layer6`` means two heads, and ``layer5``'s input
        channels say where it sits (1024: layer3, AdaptSegNet; 2048: layer4, LDBE's teacher)."""
        if not any(k.startswith("layer6.") for k in state):
            return {"multi_level": False}
        weight = state.get("layer5.conv2d_list.0.weight")
        return {"multi_level": True, "layer5_channels": int(weight.shape[1]) if weight is not None else 1024}


class DeepLabV2R101(DeepLabV2):
    """``deeplabv2_r101``: ResNet-101 (3/4/23/3 bottlenecks), 43.9 M parameters at 19 classes."""

    blocks = (3, 4, 23, 3)


class DeepLabV2R50(DeepLabV2):
    """``deeplabv2_r50``: ResNet-50 (3/4/6/3 bottlenecks)."""

    blocks = (3, 4, 6, 3)
