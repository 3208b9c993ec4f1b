"""SYNTHIA RAND-CITYSCAPES: ``RGB/*.png`` + ``GT/LABELS/*.png``.

Labels are 16-bit PNGs whose first channel (R; cv2 reads BGR, so index 2) holds the SYNTHIA class id;
the other channel holds instance ids. Ids map to Cityscapes trainIds by the table below (``SYNTHIA_TO_TRAINID``),
then to the class set (synthia16/13 drop the classes they do not have).
"""
from __future__ import annotations

import numpy as np

from sfda_deploy.classes import IGNORE, ClassSet
from sfda_deploy.data import splits
from sfda_deploy.data.base import ImageDataset, apply_lut, check_root, layout_error, pair_labels

# SYNTHIA class id → Cityscapes trainId.
SYNTHIA_TO_TRAINID = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11,
                      17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def synthia_lut(classes: ClassSet) -> np.ndarray:
    """``[256]`` uint8: SYNTHIA id → class-set index (255 = ignore)."""
    to_index = classes.trainid_lut()
    lut = np.full(256, IGNORE, np.uint8)
    for synthia_id, train_id in SYNTHIA_TO_TRAINID.items():
        lut[synthia_id] = to_index[train_id]
    return lut


def first_channel(raw: np.ndarray) -> np.ndarray:
    """The class-id plane of a SYNTHIA label as read by cv2 (R = last channel in BGR order)."""
    return raw[..., 2] if raw.ndim == 3 else raw


def build(data_root, split: str, classes: ClassSet, *, transform=None, skip_corrupt: bool = False,
          target: str = "synthia") -> ImageDataset:
    root = check_root(data_root, target)
    images = sorted((root / "RGB").glob("*.png"))
    if not images:
        raise layout_error(root, "RGB/*.png", "SYNTHIA RAND-CITYSCAPES root (the folder holding RGB/ and GT/LABELS/)")
    images = splits.select(root, split, images, f"SYNTHIA at {root}")
    pairs = pair_labels(images, lambda p: root / "GT" / "LABELS" / p.name)
    lut = synthia_lut(classes)
    return ImageDataset(pairs, lambda raw: apply_lut(first_channel(raw), lut), transform, skip_corrupt)
