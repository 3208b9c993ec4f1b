"""``segment --labels DIR``: score every frame's prediction against a label PNG, over the whole video,
per condition and per round (a labelled drive, ``generate-data --drive``).

``DIR`` holds one label PNG per frame of the source, Cityscapes labelIds, named as the frames are:
``frame_<nnnnnn>.png`` for a video (0-based frame number in the file), the image's stem for a folder.
An optional ``DIR/conditions.csv`` (``frame,round,condition``) groups the frames. Everything is checked
before the run starts; the scores are confusion matrices (fixed size: one per group).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from sfda_deploy.classes import ClassSet
from sfda_deploy.data.sources import FrameInfo, Source
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural
from sfda_deploy.metrics import ConfusionMatrix

CONDITIONS_FILE = "conditions.csv"


def video_frame_name(number: int) -> str:
    """Name of frame ``number`` (0-based, in the file) of a video: its label is ``<name>.png``."""
    return f"frame_{number:06d}"


def expected_names(source: Source) -> list[str]:
    """The label names a source's frames need, in order (every frame of the file or folder)."""
    if source.kind == "images":
        return [p.stem for p in source.paths]
    if source.kind == "video" and source.available:
        return [video_frame_name(i) for i in range(source.available)]
    raise SfdaError(f"--labels needs a video file or image folder with a known frame count, not a {source.kind}: "
                    "save the stream to a file first")


def label_name(source: Source, info: FrameInfo) -> str:
    """The label of a decoded frame (with ``--vid-stride``, video frame ``i`` is file frame ``i·stride``)."""
    return info.name if source.kind == "images" else video_frame_name(info.index * source.vid_stride)


def _read_conditions(path: Path, names: list[str]) -> dict[str, tuple[str, int]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        groups = {r["frame"]: (r["condition"], int(r["round"])) for r in rows}
    except (OSError, KeyError, ValueError, TypeError):
        raise SfdaError(f"{path} is not a frame,round,condition table: re-create it (generate-data --drive) "
                        "or remove it") from None
    missing = [n for n in names if n not in groups]
    if missing:
        raise SfdaError(f"{path} names no condition for {len(missing)} frame(s) (first: {missing[0]}): "
                        "re-create it with the labels")
    return groups


def open_labels(folder: str | Path, source: Source) -> "LabelSet":
    """Check that ``folder`` labels every frame of ``source`` (count and names) and read its conditions."""
    root = Path(folder)
    if not root.is_dir():
        raise SfdaError(f"--labels {root} is not a folder: pass the folder of label PNGs (one per frame)")
    names = expected_names(source)
    found = {p.stem for p in root.glob("*.png")}
    what = "video" if source.kind == "video" else "image folder"
    if len(found) != len(names):
        raise SfdaError(f"--labels {root} holds {len(found)} label PNGs but the {what} has {len(names)} frames: "
                        "pass the labels made for this video")
    missing = [n for n in names if n not in found]
    if missing:
        raise SfdaError(f"--labels {root} has no {missing[0]}.png (labels are named like the frames: "
                        f"{names[0]}.png ...): pass the labels made for this {what}")
    first = cv2.imread(str(root / f"{names[0]}.png"), cv2.IMREAD_UNCHANGED)
    if first is None or first.ndim != 2 or (source.size and tuple(first.shape) != tuple(source.size)):
        got = "unreadable" if first is None else "x".join(map(str, first.shape))
        raise SfdaError(f"--labels {root / names[0]}.png is {got}, not a one-channel label map of the frames' "
                        f"size {source.size[0]}x{source.size[1]}: pass labelId PNGs of the frames' size")
    conditions = root / CONDITIONS_FILE
    groups = _read_conditions(conditions, names) if conditions.is_file() else {}
    return LabelSet(root, groups)


@dataclass
class LabelSet:
    """Checked labels of a source: where they are and each frame's ``(condition, round)`` (may be empty)."""

    root: Path
    groups: dict[str, tuple[str, int]]


@dataclass
class DriveScorer:
    """Confusion matrices of the whole video, per condition, per round and per (round, condition).

    Runs on the writer thread: ``update`` reads the frame's label and counts the prediction.
    """

    labels: LabelSet
    source: Source
    classes: ClassSet
    cells: dict[tuple[str, str], ConfusionMatrix] = field(default_factory=dict)
    frames: int = 0

    def __post_init__(self):
        self.lut = torch.from_numpy(self.classes.labelid_lut().astype(np.int64))

    def _cell(self, kind: str, key: str) -> ConfusionMatrix:
        if (kind, key) not in self.cells:
            self.cells[(kind, key)] = ConfusionMatrix(self.classes.num_classes)
        return self.cells[(kind, key)]

    def update(self, info: FrameInfo, mask: np.ndarray) -> None:
        """Count frame ``info``'s prediction ``mask`` (uint8 class ids at the frame's size)."""
        name = label_name(self.source, info)
        label_ids = cv2.imread(str(self.labels.root / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        if label_ids is None or label_ids.shape != mask.shape:
            raise SfdaError(f"label {name}.png is unreadable or not of the frame's size: re-create the labels")
        label = self.lut[torch.from_numpy(label_ids.astype(np.int64))]
        pred = torch.from_numpy(mask.astype(np.int64))
        keys = [("overall", "all")]
        if name in self.labels.groups:
            condition, rnd = self.labels.groups[name]
            keys += [("condition", condition), ("round", str(rnd)), ("round_condition", f"{rnd}/{condition}")]
        for key in keys:
            self._cell(*key).update(pred, label)
        self.frames += 1

    def result(self) -> dict[str, Any]:
        """``{"frames", "overall": {miou, pixel_acc, iou}, "per_condition": {c: miou}, "per_round": {r: miou},
        "per_round_condition": {"r/c": miou}}`` (mIoU in %)."""
        names = list(self.classes.names)
        out: dict[str, Any] = {"frames": self.frames, "per_condition": {}, "per_round": {}, "per_round_condition": {}}
        for (kind, key), cm in self.cells.items():
            r = cm.result(names)
            if kind == "overall":
                out["overall"] = {k: r[k] for k in ("miou", "pixel_acc", "iou")}
            else:
                out[f"per_{kind}"][key] = r["miou"]
        return out


def format_scores(scores: dict[str, Any]) -> list[str]:
    """The lines ``segment`` prints: overall, per condition, per round."""
    lines = [f"mIoU {scores['overall']['miou']:.2f} over {plural(scores['frames'], 'labelled frame')}"]
    for kind in ("condition", "round"):
        cells = scores[f"per_{kind}"]
        if cells:
            lines.append(f"  per {kind}: " + ", ".join(f"{k} {v:.2f}" for k, v in cells.items()))
    return lines
