"""Cityscapes: ``leftImg8bit/{split}/<city>/*_leftImg8bit.png`` + ``gtFine/{split}/<city>/*_gtFine_labelIds.png``.

Labels are Cityscapes labelIds, mapped to the class set with ``ClassSet.labelid_lut``. The built-in
synthetic benchmark writes this layout too (one city, ``synth``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from sfda_deploy.classes import ClassSet
from sfda_deploy.data.base import ImageDataset, apply_lut, check_root, layout_error, pair_labels

IMAGE_DIR, LABEL_DIR = "leftImg8bit", "gtFine"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
TRAINID_SUFFIX = "_gtFine_labelTrainIds.png"


def split_dir(root: Path | str, split: str) -> Path:
    """``root/leftImg8bit/<split>``: the images of one split."""
    return Path(root) / IMAGE_DIR / split


def split_images(root: Path | str, split: str) -> list[Path]:
    """The split's ``*_leftImg8bit.png`` images (``<city>/`` folders), sorted by path."""
    return sorted(split_dir(root, split).glob(f"*/*{IMAGE_SUFFIX}"))


def label_path(root: Path, image: Path) -> Path:
    rel = image.relative_to(root / IMAGE_DIR)
    return root / LABEL_DIR / rel.parent / image.name.replace(IMAGE_SUFFIX, LABEL_SUFFIX)


def labels_beside(image: Path) -> Optional[tuple[Path, str]]:
    """The label of an image found anywhere in a Cityscapes layout (no root needed), with its kind:
    ``trainid`` (``*_gtFine_labelTrainIds.png``, preferred) or ``labelid``; None when there is none."""
    if "_leftImg8bit" not in image.name or IMAGE_DIR not in image.parts:
        return None
    parts = [LABEL_DIR if p == IMAGE_DIR else p for p in image.parts[:-1]]
    stem = image.name.split("_leftImg8bit")[0]
    for suffix, kind in ((TRAINID_SUFFIX, "trainid"), (LABEL_SUFFIX, "labelid")):
        candidate = Path(*parts) / (stem + suffix)
        if candidate.is_file():
            return candidate, kind
    return None


def build(data_root, split: str, classes: ClassSet, *, transform=None, skip_corrupt: bool = False,
          target: str = "cityscapes") -> ImageDataset:
    root = check_root(data_root, target)
    images = split_images(root, split)
    if not images:
        raise layout_error(root, f"leftImg8bit/{split}/*/*{IMAGE_SUFFIX}",
                           "Cityscapes root (the folder holding leftImg8bit/ and gtFine/)")
    pairs = pair_labels(images, lambda p: label_path(root, p))
    lut = classes.labelid_lut()
    return ImageDataset(pairs, lambda raw: apply_lut(raw, lut), transform, skip_corrupt)
