"""Frames of a video file (OpenCV), unlabelled: ``--target video --data-root clip.mp4``.

Map-style so that adaptation can shuffle: item ``i`` is frame ``i * stride``. Reading in order decodes
sequentially; a jump seeks. The capture is opened lazily in each DataLoader worker.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from torch.utils.data import Dataset

from sfda_deploy.classes import ClassSet
from sfda_deploy.data.base import check_root, to_item
from sfda_deploy.errors import SfdaError


def _open(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SfdaError(f"cannot open video {path}: the file is not a video OpenCV can decode; "
                        "convert it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) or extract frames and use --target folder")
    return cap


def count_frames(cap: cv2.VideoCapture) -> int:
    """Frames in the stream: the container's count, or (when it has none) by grabbing through."""
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if n > 0:
        return n
    n = 0
    while cap.grab():
        n += 1
    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return n


class VideoFrames(Dataset):
    """Frames ``0, stride, 2*stride, ...`` (at most ``max_frames``) of one video file."""

    def __init__(self, path: Path, stride: int = 1, max_frames: Optional[int] = None, transform=None):
        if stride < 1:
            raise SfdaError(f"video stride must be >= 1, got {stride}: pass a positive stride")
        self.path, self.stride, self.transform = Path(path), stride, transform
        cap = _open(self.path)
        total = count_frames(cap)
        cap.release()
        if total == 0:
            raise SfdaError(f"video {path} has no decodable frame: check the file")
        self.length = (total + stride - 1) // stride
        if max_frames is not None:
            self.length = min(self.length, max_frames)
        self._cap: Optional[cv2.VideoCapture] = None
        self._next = 0  # frame number the capture will decode next

    def __len__(self) -> int:
        return self.length

    def _frame(self, number: int) -> np.ndarray:
        if self._cap is None:
            self._cap = _open(self.path)
        if number != self._next:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, number)
        ok, frame = self._cap.read()
        if not ok:
            raise SfdaError(f"cannot decode frame {number} of {self.path}: the file is truncated; "
                            "re-encode it or limit the frames read")
        self._next = number + 1
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        number = index * self.stride
        item = to_item(self._frame(number), None, f"{self.path.stem}_{number:06d}", index)
        return self.transform(item) if self.transform is not None else item

    def __getstate__(self):  # captures do not pickle: each worker opens its own
        state = dict(self.__dict__)
        state["_cap"], state["_next"] = None, 0
        return state


def build(data_root, split: str, classes: ClassSet, *, transform=None, skip_corrupt: bool = False,
          target: str = "video", stride: int = 1, max_frames: Optional[int] = None) -> VideoFrames:
    """``split`` is ignored. A directory is an error that points at ``--target folder``."""
    path = check_root(data_root, target)
    if path.is_dir():
        raise SfdaError(f"--data-root {path} is a folder: --target video needs a video file "
                        "(use --target folder for a folder of images)")
    return VideoFrames(path, stride=stride, max_frames=max_frames, transform=transform)
