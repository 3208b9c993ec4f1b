"""SegFormer (MiT + all-MLP head, Xie et al. 2021) and DAFormer (MiT + ASPP-fusion head, Hoyer et al. 2022).

Registered as ``segformer_b0`` … ``segformer_b5`` and ``daformer_mitb0`` … ``daformer_mitb5``.
The decoders:

- SegFormer (``head_style="nvlabs"``, the paper's): per level a linear map to the decoder width,
  bilinear to stride 4, concatenated deepest first, a 1×1 conv → BN → ReLU fuse, dropout, 1×1
  classifier. Width 256 for B0/B1 and 768 for B2–B5 (the released configs).
- SegFormer as mmsegmentation trains it (``head_style="mmseg"``): per level a 1×1 conv → BN → ReLU,
  concatenated shallowest first, the same fuse. A different function, so a separate style.
- DAFormer: per level a linear map to 256, bilinear to stride 4, concatenated shallowest first, then
  a depthwise-separable ASPP (a 1×1 branch and 3×3 branches dilated 6/12/18, each conv → BN → ReLU,
  depthwise and pointwise alike), a 3×3 bottleneck (conv without bias → BN → ReLU), dropout and a
  1×1 classifier.

The contract (``models/base.py``): ``features(x)`` is the fused decoder map at stride 4 (the
classifier's input, what prototypes and projectors read), ``head(f)`` the dropout and classifier.
LayerNorm lives in the backbone and BatchNorm only in the head: AdaBN re-estimates the head's layers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sfda_deploy.errors import SfdaError
from sfda_deploy.models.base import SegmentationModel
from sfda_deploy.models.mit import MIT_SPECS, MixVisionTransformer

ASPP_DILATIONS = (1, 6, 12, 18)


class ConvBNReLU(nn.Module):
    """conv (no bias) → BN → ReLU; names ``conv``/``bn`` as in the releases' conv modules."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, 1, dilation * (kernel - 1) // 2, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """Depthwise 3×3 (dilated) conv → BN → ReLU, then pointwise 1×1 conv → BN → ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__()
        self.depthwise_conv = ConvBNReLU(cin, cin, 3, dilation, groups=cin)
        self.pointwise_conv = ConvBNReLU(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class LinearEmbed(nn.Module):
    """A per-pixel linear map of a feature map (``proj``: ``cin → cout``), map in, map out."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = nn.Linear(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the linear map as a 1x1 conv on the map: the same sums, no token transposes
        return F.conv2d(x, self.proj.weight[:, :, None, None], self.proj.bias)


def to_size(x: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class DecodeHead(nn.Module):
    """Common tail: ``classify(f)`` = dropout → 1×1 classifier. Subclasses define ``fuse(levels)``."""

    def __init__(self, width: int, num_classes: int, dropout: float, align_corners: bool):
        super().__init__()
        self.align_corners = align_corners
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))


class SegFormerHead(DecodeHead):
    """The all-MLP decoder, NVlabs style: ``linear_c1..4``, ``linear_fuse`` (deepest level first)."""

    def __init__(self, dims, width: int, num_classes: int, dropout: float, align_corners: bool):
        super().__init__(width, num_classes, dropout, align_corners)
        for i, dim in enumerate(dims, 1):
            setattr(self, f"linear_c{i}", LinearEmbed(dim, width))
        self.linear_fuse = ConvBNReLU(4 * width, width)

    def fuse(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = levels[0].shape[-2:]
        embedded = [to_size(getattr(self, f"linear_c{i}")(x), size, self.align_corners)
                    for i, x in enumerate(levels, 1)]
        return self.linear_fuse(torch.cat(embedded[::-1], dim=1))


class SegFormerMMHead(DecodeHead):
    """The decoder as mmsegmentation trains it: ``convs`` (1×1 conv → BN → ReLU), ``fusion_conv``
    (shallowest level first)."""

    def __init__(self, dims, width: int, num_classes: int, dropout: float, align_corners: bool):
        super().__init__(width, num_classes, dropout, align_corners)
        self.convs = nn.ModuleList(ConvBNReLU(dim, width) for dim in dims)
        self.fusion_conv = ConvBNReLU(4 * width, width)

    def fuse(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = levels[0].shape[-2:]
        return self.fusion_conv(torch.cat([to_size(conv(x), size, self.align_corners)
                                           for conv, x in zip(self.convs, levels)], dim=1))


class ASPPFusion(nn.Module):
    """Depthwise-separable ASPP without image pooling, then a 3×3 bottleneck; ``aspp_modules``/``bottleneck``."""

    def __init__(self, cin: int, width: int, dilations=ASPP_DILATIONS):
        super().__init__()
        self.aspp_modules = nn.ModuleList(ConvBNReLU(cin, width) if d == 1 else SeparableConvBNReLU(cin, width, d)
                                          for d in dilations)
        self.bottleneck = ConvBNReLU(len(dilations) * width, width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class DAFormerHead(DecodeHead):
    """DAFormer's decoder: ``embed_layers`` (linear per level) → ``fuse_layer`` (``ASPPFusion``)."""

    def __init__(self, dims, width: int, num_classes: int, dropout: float, align_corners: bool):
        super().__init__(width, num_classes, dropout, align_corners)
        self.embed_layers = nn.ModuleDict({str(i): LinearEmbed(dim, width) for i, dim in enumerate(dims)})
        self.fuse_layer = ASPPFusion(4 * width, width)

    def fuse(self, levels: list[torch.Tensor]) -> torch.Tensor:
        size = levels[0].shape[-2:]
        embedded = [to_size(self.embed_layers[str(i)](x), size, self.align_corners) for i, x in enumerate(levels)]
        return self.fuse_layer(torch.cat(embedded, dim=1))


HEADS = {"nvlabs": SegFormerHead, "mmseg": SegFormerMMHead}


class MiTSegmenter(SegmentationModel):
    """MiT backbone + a decode head; subclasses set ``variant`` (``b0`` … ``b5``).

    Args:
        num_classes: output channels C.
        align_corners: logits and decoder upsampling (the releases: False).
        norm_eps: LayerNorm eps set of the weights (``mit.NORM_EPS``: release | mmseg | transformers).
        dropout: before the classifier (train mode only; the releases: 0.1).
    """

    output_stride = 4
    classifier_weight = "decode_head.classifier.weight"
    variant = "b0"
    family = ""

    @classmethod
    def kwargs_from_state(cls, state: dict[str, torch.Tensor]) -> dict:
        """The decoder options registry-named weights imply: ``head_style`` and a non-default ``width``."""
        kwargs = {"head_style": "mmseg"} if "decode_head.fusion_conv.conv.weight" in state else {}
        if cls.classifier_weight in state:
            width = int(state[cls.classifier_weight].shape[1])
            if width != cls.default_width():
                kwargs["width"] = width
        return kwargs if cls.family == "segformer" else {k: v for k, v in kwargs.items() if k == "width"}

    @classmethod
    def default_width(cls) -> int:
        return 256 if cls.family == "daformer" or cls.variant in ("b0", "b1") else 768

    def __init__(self, num_classes: int, align_corners: bool, norm_eps: str, dropout: float):
        super().__init__(num_classes, align_corners)
        if not 0 <= dropout < 1:
            raise SfdaError(f"dropout {dropout} is outside [0, 1): choose e.g. 0.1")
        self.backbone = MixVisionTransformer(self.variant, norm_eps)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` → the fused decoder map ``[B,width,H/4,W/4]``."""
        return self.decode_head.fuse(self.backbone(x))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.decode_head.classify(features)


class SegFormer(MiTSegmenter):
    """SegFormer; ``head_style`` nvlabs (the paper's decoder) or mmseg; ``width`` default per variant."""

    family = "segformer"

    def __init__(self, num_classes: int = 19, head_style: str = "nvlabs", width: int | None = None,
                 align_corners: bool = False, norm_eps: str = "release", dropout: float = 0.1):
        super().__init__(num_classes, align_corners, norm_eps, dropout)
        if head_style not in HEADS:
            raise SfdaError(f"unknown head_style '{head_style}': choose one of {', '.join(HEADS)}")
        width = width or self.default_width()
        self.feature_channels = width
        self.decode_head = HEADS[head_style](self.backbone.dims, width, num_classes, dropout, align_corners)


class DAFormer(MiTSegmenter):
    """DAFormer (``daformer_sepaspp_proj`` configuration: embeddings and fusion 256 wide)."""

    family = "daformer"

    def __init__(self, num_classes: int = 19, width: int = 256, align_corners: bool = False,
                 norm_eps: str = "release", dropout: float = 0.1):
        super().__init__(num_classes, align_corners, norm_eps, dropout)
        self.feature_channels = width
        self.decode_head = DAFormerHead(self.backbone.dims, width, num_classes, dropout, align_corners)


def _sized(cls: type, variant: str) -> type:
    return type(f"{cls.__name__}{variant.upper()}", (cls,), {"variant": variant, "__doc__": cls.__doc__})


SEGFORMERS = {f"segformer_{v}": _sized(SegFormer, v) for v in MIT_SPECS}
DAFORMERS = {f"daformer_mit{v}": _sized(DAFormer, v) for v in MIT_SPECS}
