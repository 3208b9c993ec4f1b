"""Geometric transforms of item dicts (image uint8 ``[3,H,W]``, optional label int64 ``[H,W]``).

Images are resampled bilinearly, labels by nearest neighbour (never blended), crops pad labels with
255 (ignore) and images with 0. Random transforms draw from the ``generator`` passed to ``__call__``
(``Compose`` forwards it); without one they use torch's global RNG, which DataLoader seeds per worker,
so a seeded run is reproducible. Photometric augmentation lives in ``sfda_deploy/adapt/augment.py``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from sfda_deploy.classes import IGNORE
from sfda_deploy.errors import SfdaError


def _uniform(lo: float, hi: float, generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def resize_item(item: dict, size: tuple[int, int]) -> dict:
    """Resize to ``size`` = (H, W): image bilinear (rounded back to uint8), label nearest."""
    h, w = size
    out = dict(item)
    img = item["image"].unsqueeze(0).float()
    img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    out["image"] = img.round().clamp(0, 255).to(torch.uint8)[0]
    if "label" in item:
        lab = item["label"][None, None].float()
        out["label"] = F.interpolate(lab, size=(h, w), mode="nearest-exact")[0, 0].long()
    return out


class Resize:
    """Resize to a fixed ``(H, W)``."""

    def __init__(self, size: Sequence[int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, item: dict, generator: Optional[torch.Generator] = None) -> dict:
        return resize_item(item, self.size)


class RandomScale:
    """Scale both sides by one factor drawn uniformly from ``scale_range``."""

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0)):
        if not 0 < scale_range[0] <= scale_range[1]:
            raise SfdaError(f"scale range {tuple(scale_range)} is invalid: use 0 < low <= high, e.g. (0.5, 2.0)")
        self.lo, self.hi = float(scale_range[0]), float(scale_range[1])

    def __call__(self, item: dict, generator: Optional[torch.Generator] = None) -> dict:
        s = _uniform(self.lo, self.hi, generator)
        h, w = item["image"].shape[-2:]
        return resize_item(item, (max(1, round(h * s)), max(1, round(w * s))))


class RandomCrop:
    """Crop ``(H, W)`` at a random place; smaller inputs are padded (image 0, label 255) first."""

    def __init__(self, size: Sequence[int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, item: dict, generator: Optional[torch.Generator] = None) -> dict:
        ch, cw = self.size
        h, w = item["image"].shape[-2:]
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        out = dict(item)
        if ph or pw:  # pad bottom/right
            out["image"] = F.pad(item["image"], (0, pw, 0, ph), value=0)
            if "label" in item:
                out["label"] = F.pad(item["label"], (0, pw, 0, ph), value=IGNORE)
            h, w = h + ph, w + pw
        top = int(torch.randint(0, h - ch + 1, (), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (), generator=generator))
        out["image"] = out["image"][:, top:top + ch, left:left + cw]
        if "label" in out:
            out["label"] = out["label"][top:top + ch, left:left + cw]
        return out


class RandomHorizontalFlip:
    """Mirror image and label with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, item: dict, generator: Optional[torch.Generator] = None) -> dict:
        if float(torch.rand((), generator=generator)) >= self.p:
            return item
        out = dict(item)
        out["image"] = item["image"].flip(-1)
        if "label" in item:
            out["label"] = item["label"].flip(-1)
        return out


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, item: dict, generator: Optional[torch.Generator] = None) -> dict:
        for t in self.transforms:
            item = t(item, generator)
        return item


def train_transform(crop: Sequence[int], scale_range: Sequence[float] = (0.5, 2.0), flip: bool = True) -> Compose:
    """The usual training pipeline: random scale → random crop → random flip."""
    steps = [RandomScale(scale_range), RandomCrop(crop)]
    if flip:
        steps.append(RandomHorizontalFlip())
    return Compose(steps)
