"""BDD100K semantic segmentation: ``images/10k/{split}/*.jpg`` + ``labels/sem_seg/masks/{split}/<stem>.png``.

Masks hold Cityscapes trainIds (255 = ignore), mapped with ``ClassSet.trainid_lut``.
"""
from __future__ import annotations

from sfda_deploy.classes import ClassSet
from sfda_deploy.data.base import IMAGE_EXTENSIONS, ImageDataset, apply_lut, check_root, layout_error, pair_labels


def build(data_root, split: str, classes: ClassSet, *, transform=None, skip_corrupt: bool = False,
          target: str = "bdd100k") -> ImageDataset:
    root = check_root(data_root, target)
    images = sorted(p for p in (root / "images" / "10k" / split).glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise layout_error(root, f"images/10k/{split}/*.jpg",
                           "BDD100K root (the folder holding images/10k/ and labels/sem_seg/masks/)")
    pairs = pair_labels(images, lambda p: root / "labels" / "sem_seg" / "masks" / split / (p.stem + ".png"))
    lut = classes.trainid_lut()
    return ImageDataset(pairs, lambda raw: apply_lut(raw, lut), transform, skip_corrupt)
