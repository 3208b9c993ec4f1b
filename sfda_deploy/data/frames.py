"""Sampled frames at the deployment size (export's parity gate and INT8 calibration, ``verify``): a
folder of images, a video, or generated ones. Decoding and the Cityscapes layout are ``data.base`` and
``data.cityscapes``'s; the streaming reader ``segment`` uses is ``data.sources``.

Frames are resized to the deployment size ``(H, W)`` (the size the ONNX/engine runs at), so what is
verified and calibrated is what runs. Labels are picked up where the folder has the Cityscapes layout
(``.../leftImg8bit/.../X_leftImg8bit.png`` ↔ ``.../gtFine/.../X_gtFine_labelIds.png`` or
``X_gtFine_labelTrainIds.png``), as the built-in synthetic benchmark writes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from sfda_deploy.classes import ClassSet
from sfda_deploy.data.base import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    CorruptImageError,
    apply_lut,
    decode_image,
    list_images,
    read_label,
)
from sfda_deploy.data.cityscapes import LABEL_DIR, labels_beside
from sfda_deploy.errors import SfdaError

MAX_ASPECT_CHANGE = 0.15  # relative: beyond this, resizing to the deployment size distorts the scene


@dataclass
class Frame:
    """One frame at the deployment size: ``image`` uint8 ``[H,W,3]`` RGB, ``label`` int64 ``[H,W]`` or None."""

    name: str
    image: np.ndarray
    label: Optional[np.ndarray] = None


def synthetic_frames(imgsz: tuple[int, int], count: int, seed: int = 0) -> list[Frame]:
    """Smooth random scenes (blurred noise + colour blocks): not noise, so argmax is not a coin toss."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = imgsz
    frames = []
    for i in range(count):
        coarse = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        noise = rng.normal(0, 8, size=image.shape)
        frames.append(Frame(f"synthetic_{i:03d}", np.clip(image + noise, 0, 255).astype(np.uint8)))
    return frames


def _read_label(path: Path, kind: str, classes: ClassSet, imgsz: tuple[int, int]) -> np.ndarray:
    import cv2

    try:
        raw = read_label(path)
    except CorruptImageError:
        raw = None
    if raw is None or raw.ndim != 2:
        raise SfdaError(f"label {path} is not a readable single-channel PNG: fix or remove it")
    if kind != "labelid":  # Cityscapes trainIds (0..18, 255): mapped to the model's class set below
        bad = np.setdiff1d(np.unique(raw), np.r_[np.arange(19), 255])
        if bad.size:
            raise SfdaError(f"label {path} holds values {bad[:5].tolist()} that are not Cityscapes trainIds "
                            "(0..18, 255): pass *_labelTrainIds.png or *_labelIds.png files")
    label = apply_lut(raw, classes.labelid_lut() if kind == "labelid" else classes.trainid_lut())
    label = cv2.resize(label.astype(np.uint8), (imgsz[1], imgsz[0]), interpolation=cv2.INTER_NEAREST)
    return label.astype(np.int64)


def _check_aspect(source: str, hw: tuple[int, int], imgsz: tuple[int, int]) -> None:
    have, want = hw[1] / hw[0], imgsz[1] / imgsz[0]
    if abs(have / want - 1) > MAX_ASPECT_CHANGE:
        raise SfdaError(
            f"{source} is {hw[0]}x{hw[1]} but the model runs at {imgsz[0]}x{imgsz[1]} (another aspect "
            "ratio): use frames from the deployment camera or pass --imgsz H W matching them"
        )


def _resize(image: np.ndarray, imgsz: tuple[int, int]) -> np.ndarray:
    import cv2

    if image.shape[:2] == tuple(imgsz):
        return image
    return cv2.resize(image, (imgsz[1], imgsz[0]), interpolation=cv2.INTER_LINEAR)


def _image_files(root: Path) -> list[Path]:
    files = [p for p in list_images(root) if LABEL_DIR not in p.parts]
    if not files:
        raise SfdaError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}): point it at a folder of frames")
    return files


def folders_used(root: Path | str, count: int) -> list[str]:
    """The sub-folders of ``root`` (relative, e.g. ``leftImg8bit/val/synth``: the split) the first ``count``
    frames ``read_frames`` takes from a folder come from, in order; [] for a video or a flat folder."""
    root = Path(root)
    if not root.is_dir():
        return []
    parents = dict.fromkeys(str(p.parent.relative_to(root)) for p in _image_files(root)[:count])
    return [p for p in parents if p != "."]


def _from_folder(root: Path, imgsz, count, classes) -> Iterator[Frame]:
    for path in _image_files(root)[:count]:
        rgb = decode_image(path)
        if rgb is None:
            raise SfdaError(f"{path} is not a readable image: remove it or re-save it as PNG/JPEG")
        _check_aspect(str(path), rgb.shape[:2], imgsz)
        found = labels_beside(path)
        label = _read_label(*found, classes, imgsz) if found else None
        yield Frame(path.stem, _resize(rgb, imgsz), label)


def _from_video(path: Path, imgsz, count) -> Iterator[Frame]:
    """``count`` frames spread evenly over the video (neighbouring frames are near-duplicates)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    if total <= 0:
        cap.release()
        raise SfdaError(f"{path} is not a readable video: check the file or extract frames to a folder")
    step = max(1, total // count)
    try:
        for i in range(0, total, step):
            cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, bgr = cap.read()
            if not ok:
                break
            if i == 0:
                _check_aspect(str(path), bgr.shape[:2], imgsz)
            yield Frame(f"{path.stem}_{i:06d}", _resize(bgr[..., ::-1], imgsz))
            if (i // step) + 1 >= count:
                break
    finally:
        cap.release()


def read_frames(source: Path | str, imgsz: tuple[int, int], count: int, classes: ClassSet,
                what: str = "--verify-data") -> list[Frame]:
    """Up to ``count`` frames of a folder (recursive, sorted) or a video, at ``imgsz``.

    Raises SfdaError for a missing path, a folder without images, unreadable files, frames of another
    aspect ratio than the deployment size, and labels outside the model's class set.
    """
    source = Path(source)
    if source.is_dir():
        frames = list(_from_folder(source, imgsz, count, classes))
    elif source.is_file() and source.suffix.lower() in VIDEO_EXTENSIONS:
        frames = list(_from_video(source, imgsz, count))
    elif source.is_file():
        raise SfdaError(f"{what} {source} is neither a folder of images nor a video "
                        f"({', '.join(VIDEO_EXTENSIONS)}): pass a folder or a video file")
    else:
        raise SfdaError(f"{what} {source} does not exist: pass a folder of images or a video file")
    return frames


def stack(frames: list[Frame]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Frames → images uint8 ``[N,H,W,3]`` and labels int64 ``[N,H,W]`` (None unless every frame has one)."""
    images = np.stack([f.image for f in frames])
    labels = np.stack([f.label for f in frames]) if all(f.label is not None for f in frames) else None
    return images, labels
