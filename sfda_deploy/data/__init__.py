"""Datasets: one small module per layout, picked by ``--target`` (``build_dataset``).

Items are dicts: ``image`` uint8 ``[3,H,W]`` RGB, ``label`` int64 ``[H,W]`` (255 = ignore, labelled
targets only), ``name`` (image stem) and ``index``; see docs/contracts.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from sfda_deploy.classes import get_class_set, suggest
from sfda_deploy.data import acdc, bdd100k, cityscapes, folder, gta5, synthia, video
from sfda_deploy.errors import SfdaError

TARGETS: dict[str, Callable] = {
    "cityscapes": cityscapes.build,
    "gta5": gta5.build,
    "synthia": synthia.build,
    "acdc": acdc.build,
    **{f"acdc-{c}": acdc.build for c in acdc.CONDITIONS},
    "bdd100k": bdd100k.build,
    "folder": folder.build,
    "video": video.build,
}

LABELLED = tuple(t for t in TARGETS if t not in ("folder", "video"))


def build_dataset(target: str, data_root: str | Path | None, split: str, *, class_set: str = "cityscapes19",
                  transform=None, skip_corrupt: bool = False, **options):
    """The dataset of one target layout.

    Args:
        target: layout name (``cityscapes``, ``gta5``, ``synthia``, ``acdc``, ``acdc-fog``, ...,
            ``bdd100k``, ``folder``, ``video``).
        data_root: the dataset's root folder (a video file for ``video``).
        split: ``train``/``val``/...; ignored by ``folder`` and ``video``.
        class_set: labels are mapped to this set's indices (255 = ignore).
        transform: item dict → item dict, applied after decoding.
        skip_corrupt: warn and skip undecodable images instead of failing (see ``data.base``).
        **options: layout-specific (``video``: ``stride``, ``max_frames``).
    """
    if target not in TARGETS:
        raise SfdaError(f"unknown --target '{target}'{suggest(target, TARGETS)}: choose one of {', '.join(TARGETS)}")
    return TARGETS[target](data_root, split, get_class_set(class_set), transform=transform,
                           skip_corrupt=skip_corrupt, target=target, **options)


def is_labelled(target: str) -> bool:
    return target in LABELLED


__all__ = ["TARGETS", "build_dataset", "is_labelled"]
