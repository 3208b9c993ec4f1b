"""ACDC: ``rgb_anon/<condition>/<split>/<seq>/*_rgb_anon.png`` + ``gt/<condition>/<split>/<seq>/*_gt_labelIds.png``.

``--target acdc`` takes every condition folder present; ``acdc-fog`` (``-night``, ``-rain``, ``-snow``)
one. The ``<split>_ref`` folders (reference images without labels) are not used.
"""
from __future__ import annotations

from pathlib import Path

from sfda_deploy.classes import ClassSet
from sfda_deploy.data.base import ImageDataset, apply_lut, check_root, layout_error, pair_labels

CONDITIONS = ("fog", "night", "rain", "snow")
IMAGE_SUFFIX = "_rgb_anon.png"
LABEL_SUFFIX = "_gt_labelIds.png"


def label_path(root: Path, image: Path) -> Path:
    rel = image.relative_to(root / "rgb_anon")
    return root / "gt" / rel.parent / image.name.replace(IMAGE_SUFFIX, LABEL_SUFFIX)


def build(data_root, split: str, classes: ClassSet, *, transform=None, skip_corrupt: bool = False,
          target: str = "acdc") -> ImageDataset:
    root = check_root(data_root, target)
    condition = target.split("-", 1)[1] if "-" in target else "*"
    images = sorted((root / "rgb_anon").glob(f"{condition}/{split}/*/*{IMAGE_SUFFIX}"))
    if not images:
        raise layout_error(root, f"rgb_anon/{condition}/{split}/*/*{IMAGE_SUFFIX}",
                           "ACDC root (the folder holding rgb_anon/ and gt/)")
    pairs = pair_labels(images, lambda p: label_path(root, p))
    lut = classes.labelid_lut()
    return ImageDataset(pairs, lambda raw: apply_lut(raw, lut), transform, skip_corrupt)
