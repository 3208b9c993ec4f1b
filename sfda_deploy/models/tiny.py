"""``tiny``: a four-layer network for tests (output stride 8, ~20 k parameters)."""
from __future__ import annotations

from torch import nn

from sfda_deploy.models.base import SegmentationModel


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyNet(SegmentationModel):
    output_stride = 8

    def __init__(self, num_classes: int = 19, width: int = 16, align_corners: bool = False):
        super().__init__(num_classes, align_corners)
        self.feature_channels = width * 2
        self.backbone = nn.Sequential(
            _conv_bn_relu(3, width, 2), _conv_bn_relu(width, width * 2, 2), _conv_bn_relu(width * 2, width * 2, 2)
        )
        self.classifier = nn.Conv2d(width * 2, num_classes, 1)

    def features(self, x):
        return self.backbone(x)

    def head(self, features):
        return self.classifier(features)
