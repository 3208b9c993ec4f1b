"""GTA5: ``images/*.png`` + ``labels/*.png`` (same file name, Cityscapes labelIds).

GTA5 has no split folders: ``--split train`` (or ``all``) is every image, other splits need a
``<root>/<split>.txt`` list (see ``splits.select``).
"""
from __future__ import annotations

from sfda_deploy.classes import ClassSet
from sfda_deploy.data import splits
from sfda_deploy.data.base import IMAGE_EXTENSIONS, ImageDataset, apply_lut, check_root, layout_error, pair_labels


def build(data_root, split: str, classes: ClassSet, *, transform=None, skip_corrupt: bool = False,
          target: str = "gta5") -> ImageDataset:
    root = check_root(data_root, target)
    images = sorted(p for p in (root / "images").glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise layout_error(root, "images/*.png", "GTA5 root (the folder holding images/ and labels/)")
    images = splits.select(root, split, images, f"GTA5 at {root}")
    pairs = pair_labels(images, lambda p: root / "labels" / (p.stem + ".png"))
    lut = classes.labelid_lut()
    return ImageDataset(pairs, lambda raw: apply_lut(raw, lut), transform, skip_corrupt)
