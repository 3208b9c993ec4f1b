"""The contract every segmentation network here follows.

``features(x)`` → the deepest feature map ``[B,F,h,w]``; ``head(f)`` → low-resolution logits
``[B,C,h,w]``; ``forward(x)`` → logits at the input size ``[B,C,H,W]`` (bilinear, with ``size=``).
Methods that need features (projection heads, prototypes) call ``forward(x, return_features=True)``
so one pass serves both and DDP still sees the call through ``forward``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationModel(nn.Module):
    """Base class. Subclasses set ``feature_channels``/``output_stride`` and define ``features``/``head``."""

    feature_channels: int = 0
    output_stride: int = 8

    def __init__(self, num_classes: int, align_corners: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.align_corners = align_corners

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def upsample(self, logits: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Args: x ``[B,3,H,W]`` normalized. Returns logits ``[B,C,H,W]`` (and features if asked)."""
        feats = self.features(x)
        logits = self.upsample(self.head(feats), x.shape[-2:])
        return (logits, feats) if return_features else logits

    def head_parameters(self):
        """Parameters trained at the recipes' 10× head learning rate."""
        return [p for n, p in self.named_parameters() if self.is_head_parameter(n)]

    def is_head_parameter(self, name: str) -> bool:
        return name.startswith("classifier") or name.startswith("layer5") or "head" in name
