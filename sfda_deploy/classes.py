"""Class sets: names, palette and label-id maps (Cityscapes' official label table).

A class set is the list of classes a model predicts, in output-channel order. ``cityscapes19`` is the
standard trainId order; ``synthia16`` and ``synthia13`` are its subsets used by the SYNTHIA protocols.
``tests/test_classes.py`` checks every figure here against ``cityscapesscripts.helpers.labels``.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from sfda_deploy.errors import SfdaError

IGNORE = 255

# (name, Cityscapes labelId, colour) in trainId order 0..18.
_CITYSCAPES = (
    ("road", 7, (128, 64, 128)),
    ("sidewalk", 8, (244, 35, 232)),
    ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)),
    ("fence", 13, (190, 153, 153)),
    ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)),
    ("traffic sign", 20, (220, 220, 0)),
    ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)),
    ("sky", 23, (70, 130, 180)),
    ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)),
    ("car", 26, (0, 0, 142)),
    ("truck", 27, (0, 0, 70)),
    ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)),
    ("motorcycle", 32, (0, 0, 230)),
    ("bicycle", 33, (119, 11, 32)),
)

# SYNTHIA protocols: 16 classes drop terrain, truck, train; 13 also drop wall, fence, pole.
_SYNTHIA16 = tuple(i for i in range(19) if i not in (9, 14, 16))
_SYNTHIA13 = tuple(i for i in _SYNTHIA16 if i not in (3, 4, 5))


@dataclass(frozen=True)
class ClassSet:
    """A model's output classes.

    Attributes:
        name: registry name, e.g. ``cityscapes19``.
        names: class names in output order.
        palette: ``[C,3]`` RGB colours.
        train_ids: for each output index, its Cityscapes trainId (0..18).
        label_ids: for each output index, its Cityscapes labelId.
    """

    name: str
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    train_ids: tuple[int, ...]
    label_ids: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette_array(self) -> np.ndarray:
        """``[256,3]`` uint8 lookup table: class index → colour, 255 (ignore) → black."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = np.asarray(self.palette, np.uint8)
        return lut

    def labelid_lut(self) -> np.ndarray:
        """``[256]`` uint8 lookup table: Cityscapes labelId → this set's index (255 = ignore)."""
        lut = np.full(256, IGNORE, np.uint8)
        for index, label_id in enumerate(self.label_ids):
            lut[label_id] = index
        return lut

    def trainid_lut(self) -> np.ndarray:
        """``[256]`` uint8 lookup table: Cityscapes trainId (0..18) → this set's index."""
        lut = np.full(256, IGNORE, np.uint8)
        for index, train_id in enumerate(self.train_ids):
            lut[train_id] = index
        return lut

    def index_to_labelid(self) -> np.ndarray:
        """``[256]`` uint8 lookup table: this set's index → Cityscapes labelId (ignore → 0)."""
        lut = np.zeros(256, np.uint8)
        lut[: self.num_classes] = np.asarray(self.label_ids, np.uint8)
        return lut


def _subset(name: str, train_ids: tuple[int, ...]) -> ClassSet:
    rows = [_CITYSCAPES[i] for i in train_ids]
    return ClassSet(
        name=name,
        names=tuple(r[0] for r in rows),
        palette=tuple(r[2] for r in rows),
        train_ids=train_ids,
        label_ids=tuple(r[1] for r in rows),
    )


CLASS_SETS: dict[str, ClassSet] = {
    "cityscapes19": _subset("cityscapes19", tuple(range(19))),
    "synthia16": _subset("synthia16", _SYNTHIA16),
    "synthia13": _subset("synthia13", _SYNTHIA13),
}


def suggest(name: str, valid) -> str:
    """A ' (did you mean X?)' hint for a misspelt name (case aside: ``ATP`` → ``atp``), or ''."""
    by_lower = {str(v).lower(): str(v) for v in valid}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.5)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


def get_class_set(name: str) -> ClassSet:
    """Look a class set up by name; the error lists the valid names."""
    try:
        return CLASS_SETS[name]
    except KeyError:
        raise SfdaError(
            f"unknown class set '{name}'{suggest(name, CLASS_SETS)}: choose one of {', '.join(CLASS_SETS)}"
        ) from None


def class_set_for(num_classes: int) -> ClassSet:
    """The default class set with this many classes (19 → cityscapes19, 16 → synthia16, ...)."""
    for cs in CLASS_SETS.values():
        if cs.num_classes == num_classes:
            return cs
    raise SfdaError(
        f"no class set has {num_classes} classes: use 19 (cityscapes19), 16 (synthia16) or 13 (synthia13)"
    )
