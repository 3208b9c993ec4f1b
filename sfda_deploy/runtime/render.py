"""Drawing and writing results: palette overlay, per-class shares, mask PNGs, the mp4v video writer."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from sfda_deploy.classes import IGNORE, ClassSet
from sfda_deploy.disk import DiskFullError, free_bytes
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


LEGEND_MIN_SHARE = 0.01  # classes under 1 % of a frame are left out of its in-video legend
LEGEND_MAX_CLASSES = 6


LEGEND_MAX_HEIGHT = 0.3  # of the frame: the legend leaves the scene visible on small frames


def legend_classes(shares: np.ndarray, min_share: float = LEGEND_MIN_SHARE,
                   most: int = LEGEND_MAX_CLASSES) -> list[int]:
    """Class indices worth a line in a frame's legend: share >= ``min_share``, largest first, at most ``most``."""
    order = np.argsort(-shares, kind="stable")
    return [int(c) for c in order if shares[c] >= min_share][:most]


def legend_image(names, palette: np.ndarray, row: int = 18, width: int = 170) -> np.ndarray:
    """``legend.png``: one row per class (colour swatch + name), RGB uint8 ``[row * C + 8, width, 3]``."""
    image = np.full((row * len(names) + 8, width, 3), 255, np.uint8)
    for k, name in enumerate(names):
        y = 4 + k * row
        image[y + 2: y + row - 2, 4: 4 + row] = palette[k]
        cv2.rectangle(image, (4, y + 2), (3 + row, y + row - 3), (80, 80, 80), 1)
        cv2.putText(image, name, (row + 10, y + row - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def draw_legend(image: np.ndarray, classes: list[int], names, palette: np.ndarray) -> np.ndarray:
    """Draw a small legend of ``classes`` (swatch + name) in the frame's bottom-left corner, in place.

    Sized from the frame height (readable from ~128 px up) on a darkened background, in at most
    ``LEGEND_MAX_HEIGHT`` of the frame's height: on a small frame only the largest classes get a row
    (``legend.png`` beside the overlay lists them all).
    """
    if not classes:
        return image
    h, w = image.shape[:2]
    scale = max(h / 720.0, 0.28)
    row = max(int(26 * scale), 9)
    classes = classes[: max(1, int(LEGEND_MAX_HEIGHT * h - 4) // row)]
    text_w = max(cv2.getTextSize(names[c], cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for c in classes)
    box_w, box_h = min(row + 6 + text_w + 4, w), min(row * len(classes) + 4, h)
    y0 = h - box_h
    region = image[y0:h, 0:box_w]
    region[:] = (region * 0.35).astype(np.uint8)
    for k, c in enumerate(classes):
        y = y0 + 2 + k * row
        if y + row > h:
            break
        image[y + 1: y + row - 1, 2: row] = palette[c]
        cv2.putText(image, names[c], (row + 4, y + row - 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
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
        """Append a frame; a frame the writer refuses (a full disk) raises, naming the video's folder."""
        if rgb.shape[:2] != self.size:
            rgb = cv2.resize(rgb, (self.size[1], self.size[0]), interpolation=cv2.INTER_LINEAR)
        if self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)) is False:  # older OpenCV returns None
            free = free_bytes(self.path.parent)
            if free is not None and free < rgb.nbytes:  # an encoded frame is at most its raw size
                raise DiskFullError(self.path, rgb.nbytes, "frame of up to ")
            raise SfdaError(f"cannot write frame {self.frames} of {self.path}: check the folder, or pass "
                            "--no-save-video")
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
