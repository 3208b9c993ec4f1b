"""Drawing and writing results: palette overlay, per-class shares, mask PNGs, the mp4v video writer."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from sfda_deploy.classes import IGNORE, ClassSet
from sfda_deploy.errors import SfdaError
from sfda_deploy.runs import write_bytes

MASK_FORMATS = ("trainid", "labelid", "color")


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label map ``[h,w]`` → ``[H,W]`` by nearest neighbour (class ids must not be blended)."""
    if labels.shape[:2] == tuple(size):
        return labels
    return cv2.resize(labels, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def class_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of the pixels of ``labels`` ``[H,W]`` given to each class → ``[C]`` float64 (sums to <= 1)."""
    counts = np.bincount(labels.ravel(), minlength=256)[:num_classes]
    return counts / max(labels.size, 1)


def overlay(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float) -> np.ndarray:
    """Blend class colours over the frame.

    Args:
        frame: RGB uint8 ``[H,W,3]``.
        labels: uint8 ``[H,W]`` at the frame size.
        palette: ``[256,3]`` uint8 lookup table (``ClassSet.palette_array``).
        alpha: weight of the colours (0: frame only, 1: colours only).
    Returns:
        RGB uint8 ``[H,W,3]``.
    """
    colours = palette[labels]
    return cv2.addWeighted(frame, 1.0 - alpha, colours, alpha, 0.0)


def put_fps(image: np.ndarray, fps: float) -> np.ndarray:
    """Write 'NN.N fps' in the top-left corner (in place)."""
    scale = max(image.shape[0] / 720.0, 0.4)
    cv2.putText(image, f"{fps:.1f} fps", (int(10 * scale), int(30 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                scale, (255, 255, 255), max(int(2 * scale), 1), cv2.LINE_AA)
    return image


def mask_image(labels: np.ndarray, fmt: str, classes: ClassSet) -> np.ndarray:
    """Label map (class-set indices) → the image to save.

    ``trainid``: Cityscapes trainIds (what ``evaluate --pred-format trainid`` reads), ignore 255;
    ``labelid``: Cityscapes labelIds (the official evaluation format); ``color``: the palette, BGR for cv2.
    """
    if fmt == "trainid":
        lut = np.full(256, IGNORE, np.uint8)
        lut[: classes.num_classes] = np.asarray(classes.train_ids, np.uint8)
        return lut[labels]
    if fmt == "labelid":
        return classes.index_to_labelid()[labels]
    if fmt == "color":
        return classes.palette_array()[labels][..., ::-1]
    raise SfdaError(f"unknown --mask-format '{fmt}': choose {', '.join(MASK_FORMATS)}")


def write_png(path: Path, image: np.ndarray) -> None:
    """PNG (RGB ``[H,W,3]`` is written as is: callers pass BGR for colour) written atomically."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise SfdaError(f"cannot encode {path.name} as PNG")
    write_bytes(path, data.tobytes())


class VideoSink:
    """mp4v video writer at the input's fps and size, written under a temporary name.

    ``close()`` finalises the container (so a run stopped by Ctrl-C still leaves a playable file)
    and renames it onto ``path``. Frames of another size (a stream that changed resolution) are
    resized to the first frame's size.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        self.path, self.size, self.frames = Path(path), tuple(size), 0
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        h, w = self.size
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not self.writer.isOpened():
            self.writer.release()
            self.tmp.unlink(missing_ok=True)
            raise SfdaError(f"cannot write an mp4v video at {self.path.parent} ({w}x{h} @ {fps:g} fps): "
                            "check the folder is writable, or pass --no-save-video")

    def write(self, rgb: np.ndarray) -> None:
        if rgb.shape[:2] != self.size:
            rgb = cv2.resize(rgb, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def abort(self) -> None:
        """Stop and delete the temporary file (nothing is left at ``path``)."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        self.tmp.unlink(missing_ok=True)

    def close(self) -> Optional[Path]:
        """Finish the file; returns its path, or None when no frame was written (nothing left)."""
        if self.writer is None:
            return self.path if self.path.exists() else None
        self.writer.release()
        self.writer = None
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        os.replace(self.tmp, self.path)
        return self.path
