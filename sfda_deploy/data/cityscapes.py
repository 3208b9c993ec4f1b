"""Cityscapes: ``leftImg8bit/{split}/<city>/*_leftImg8bit.png`` + ``gtFine/{split}/<city>/*_gtFine_labelIds.png``.

Labels are Cityscapes labelIds, mapped to the class set with ``ClassSet.labelid_lut``. The built-in
synthetic benchmark writes this layout too (one city, ``synth``).
"""
from __future__ import annotations

from pathlib import Path

from sfda_deploy.classes import ClassSet
from sfda_deploy.data.base import ImageDataset, apply_lut, check_root, layout_error, pair_labels

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def label_path(root: Path, image: Path) -> Path:
    rel = image.relative_to(root / "leftImg8bit")
    return root / "gtFine" / rel.parent / image.name.replace(IMAGE_SUFFIX, LABEL_SUFFIX)


def build(data_root, split: str, classes: ClassSet, *, transform=None, skip_corrupt: bool = False,
          target: str = "cityscapes") -> ImageDataset:
    root = check_root(data_root, target)
    images = sorted((root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}"))
    if not images:
        raise layout_error(root, f"leftImg8bit/{split}/*/*{IMAGE_SUFFIX}",
                           "Cityscapes root (the folder holding leftImg8bit/ and gtFine/)")
    pairs = pair_labels(images, lambda p: label_path(root, p))
    lut = classes.labelid_lut()
    return ImageDataset(pairs, lambda raw: apply_lut(raw, lut), transform, skip_corrupt)
