"""Fitting frames to the model's input size: letterbox (keep the aspect, pad) or stretch.

Letterboxing, as Ultralytics does it, scales a frame by the largest factor that fits the input size,
centres it and pads the rest with the model's mean colour (zero after normalisation, so the pad adds
no signal). The label map is cropped back to the content and resized to the frame's exact size.
Stretching resizes to the input size whatever the aspect (distorting frames of another aspect).

The geometry (``letterbox_params``) is a pure function; ``letterbox`` / ``unletterbox`` apply it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.runtime.render import resize_labels

RESIZE_MODES = ("letterbox", "stretch")


@dataclass(frozen=True)
class Letterbox:
    """Where a frame of ``source`` ``(H, W)`` lies inside the model input ``target`` ``(h, w)``.

    The frame is resized to ``content`` ``(h', w')`` and placed at row ``top``, column ``left``;
    ``target - content - (top, left)`` pixels of padding follow on the bottom/right.
    """

    source: tuple[int, int]
    target: tuple[int, int]
    content: tuple[int, int]
    top: int
    left: int

    @property
    def identity(self) -> bool:
        return self.source == self.target


def letterbox_params(source: Sequence[int], target: Sequence[int]) -> Letterbox:
    """The largest aspect-keeping fit of ``source`` ``(H, W)`` in ``target`` ``(h, w)``, centred.

    scale = min(h / H, w / W); content = round(H * scale), round(W * scale) (at least 1 pixel,
    at most the target); the spare rows/columns are split with the odd one at the bottom/right.
    """
    (sh, sw), (th, tw) = (int(v) for v in source), (int(v) for v in target)
    scale = min(th / sh, tw / sw)
    ch = min(max(int(round(sh * scale)), 1), th)
    cw = min(max(int(round(sw * scale)), 1), tw)
    return Letterbox((sh, sw), (th, tw), (ch, cw), (th - ch) // 2, (tw - cw) // 2)


def pad_colour(meta: ModelMeta) -> tuple[int, int, int]:
    """The model's mean as an RGB uint8 colour (its normalised value is ~0)."""
    mean = tuple(meta.mean)[::-1] if meta.channel_order == "BGR" else tuple(meta.mean)
    return tuple(int(round(min(max(m, 0.0), 255.0))) for m in mean)


def letterbox(frame: np.ndarray, box: Letterbox, fill: Sequence[int]) -> np.ndarray:
    """RGB uint8 ``[H,W,3]`` → ``[h,w,3]``: resized (bilinear) into ``box.content`` and padded with ``fill``."""
    if box.identity:
        return frame
    ch, cw = box.content
    resized = frame if frame.shape[:2] == (ch, cw) else cv2.resize(frame, (cw, ch), interpolation=cv2.INTER_LINEAR)
    if (ch, cw) == box.target:
        return resized
    th, tw = box.target
    return cv2.copyMakeBorder(resized, box.top, th - ch - box.top, box.left, tw - cw - box.left,
                              cv2.BORDER_CONSTANT, value=tuple(int(c) for c in fill))


def unletterbox(labels: np.ndarray, box: Letterbox) -> np.ndarray:
    """Label map ``[h,w]`` at the model's size → ``[H,W]`` at the frame's size (pad cropped, nearest)."""
    ch, cw = box.content
    content = labels[box.top: box.top + ch, box.left: box.left + cw]
    return resize_labels(content, box.source)


def check_resize_mode(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise SfdaError(f"unknown --resize '{mode}': choose {', '.join(RESIZE_MODES)}")
    return mode


def fit_frames(frames: Sequence[np.ndarray], target: Sequence[int], mode: str,
               fill: Sequence[int]) -> tuple[list[np.ndarray], list[Optional[Letterbox]]]:
    """Frames of any size → (frames for ``backend.preprocess``, the letterbox of each or None).

    ``stretch`` leaves the frames to the backend's plain resize (and returns None boxes).
    """
    if check_resize_mode(mode) == "stretch":
        return list(frames), [None] * len(frames)
    boxes = [letterbox_params(f.shape[:2], target) for f in frames]
    return [letterbox(f, b, fill) for f, b in zip(frames, boxes)], boxes
