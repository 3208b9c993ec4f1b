"""What every frame reader shares: decoding with cv2, the image/video extensions, label look-up tables,
the item dict, errors. Datasets (``ImageDataset`` and the layouts), the streaming reader
(``data.sources``: ``segment``'s images, videos, webcams, streams) and the sampled frames of export's
parity gate and calibration (``data.frames``) all decode here.

A layout module only lists ``(image path, label path or None)`` pairs and says how a raw label maps to
the class set; ``ImageDataset`` does the reading. Decodability is checked lazily (a full scan of a
large dataset at start-up would cost minutes): a corrupt or unreadable image raises ``SfdaError``
naming the file when it is reached, unless the dataset was built with ``skip_corrupt=True``, which
warns, counts the file in ``dataset.corrupt`` and serves the next readable item instead.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from sfda_deploy.classes import IGNORE
from sfda_deploy.errors import SfdaError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")


class CorruptImageError(SfdaError):
    """An image or label file that cv2 cannot decode."""


def decode_image(path: Path | str) -> Optional[np.ndarray]:
    """``[H,W,3]`` uint8 RGB, or None when the file is missing or not a decodable image (cv2 decodes BGR;
    converted here, once). Read as bytes first, so any path the OS accepts works."""
    path = Path(path)
    data = np.fromfile(str(path), np.uint8) if path.is_file() else np.empty(0, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image(path: Path | str) -> np.ndarray:
    """``decode_image`` that raises ``CorruptImageError`` naming the file instead of returning None."""
    image = decode_image(path)
    if image is None:
        raise CorruptImageError(f"cannot decode image {path}: the file is corrupt or not an image; "
                                "replace or delete it")
    return image


def list_images(root: Path, recursive: bool = True) -> list[Path]:
    """The image files under ``root`` (in sub-folders too when ``recursive``), sorted by path; hidden
    files (``.name``, e.g. macOS ``._x.png`` forks) are left out."""
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                  and p.is_file())


def png_is_palette(path: Path | str) -> bool:
    """True for a PNG whose header says colour type 3 (palette), as GTA5's published labels are."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[25] == 3


def read_label(path: Path | str) -> np.ndarray:
    """The raw label array as stored: 8/16-bit ids (1 channel), 3 channels in BGR order for colour PNGs,
    and the palette INDICES of a palette PNG (cv2 would expand those to colours; GTA5's labels are
    palette images whose indices are the Cityscapes labelIds)."""
    if png_is_palette(path):
        from PIL import Image

        try:
            with Image.open(path) as im:
                return np.array(im)
        except (OSError, ValueError):
            lab = None
    else:
        lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise CorruptImageError(f"cannot decode label {path}: the file is corrupt or not a PNG; "
                                "restore it from the dataset archive")
    return lab


def apply_lut(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map raw ids through ``lut``; ids beyond the table become 255 (ignore). Returns ``[H,W]`` uint8."""
    if raw.ndim == 3:
        raise SfdaError(f"label has {raw.shape[2]} channels where one was expected: "
                        "pass the *labelIds* / *trainIds* PNGs, not the colour ones")
    if raw.dtype == np.uint8 and lut.shape[0] >= 256:
        return lut[raw]
    out = np.full(raw.shape, IGNORE, np.uint8)
    inside = raw < lut.shape[0]
    out[inside] = lut[raw[inside]]
    return out


def to_item(image: np.ndarray, label: Optional[np.ndarray], name: str, index: int) -> dict:
    """The contract's item dict: ``image`` uint8 ``[3,H,W]`` RGB, ``label`` int64 ``[H,W]``, name, index."""
    item = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), "name": name, "index": index}
    if label is not None:
        if label.shape != image.shape[:2]:
            raise SfdaError(f"label of '{name}' is {label.shape[1]}x{label.shape[0]} but its image is "
                            f"{image.shape[1]}x{image.shape[0]}: the label files do not belong to these images")
        item["label"] = torch.from_numpy(label.astype(np.int64))
    return item


def layout_error(root: Path, expected: str, what: str) -> SfdaError:
    return SfdaError(f"--data-root {root} has no {expected}: point it at the {what}")


def check_root(root, target: str) -> Path:
    if root is None:
        raise SfdaError(f"--target {target} needs --data-root: pass the folder that holds the dataset")
    root = Path(root).expanduser()
    if not root.exists():
        raise SfdaError(f"--data-root {root} does not exist: check the path")
    return root


def pair_labels(images: Sequence[Path], label_of: Callable[[Path], Path]) -> list[tuple[Path, Path]]:
    """Pair each image with its label; the first missing label is a one-line error."""
    pairs = []
    for img in images:
        lab = label_of(img)
        if not lab.is_file():
            raise SfdaError(f"image {img} has no label (expected {lab}): restore the label files "
                            "or use --target folder for unlabelled images")
        pairs.append((img, lab))
    return pairs


class ImageDataset(Dataset):
    """Images (and labels) from a list of files.

    Args:
        pairs: ``(image path, label path or None)`` per item, in a fixed order.
        decode_label: raw label array → ``[H,W]`` uint8 class indices (255 = ignore).
        transform: item dict → item dict (``sfda_deploy.data.transforms``).
        skip_corrupt: warn and serve the next readable item instead of raising.
    """

    def __init__(self, pairs, decode_label: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                 transform=None, skip_corrupt: bool = False):
        self.pairs = list(pairs)
        self.decode_label = decode_label
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.corrupt: set[str] = set()  # files skipped so far (in this process)

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> dict:
        """The untransformed item (raises ``CorruptImageError``)."""
        img_path, lab_path = self.pairs[index]
        image = read_image(img_path)
        label = None
        if lab_path is not None and self.decode_label is not None:
            label = self.decode_label(read_label(lab_path))
        return to_item(image, label, Path(img_path).stem, index)

    def load_label(self, index: int) -> tuple[str, np.ndarray]:
        """(image stem, ``[H,W]`` uint8 class indices) without decoding the image (raises
        ``CorruptImageError``); for scoring saved predictions."""
        img_path, lab_path = self.pairs[index]
        if lab_path is None or self.decode_label is None:
            raise SfdaError(f"{img_path} has no label: evaluation needs a labelled --target")
        return Path(img_path).stem, self.decode_label(read_label(lab_path))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.pairs):  # the end of plain iteration (``for item in dataset``)
            raise IndexError(index)
        for offset in range(len(self.pairs)):
            i = (index + offset) % len(self.pairs)
            try:
                item = self.load(i)
            except CorruptImageError as e:
                if not self.skip_corrupt:
                    raise
                if str(self.pairs[i][0]) not in self.corrupt:
                    self.corrupt.add(str(self.pairs[i][0]))
                    warnings.warn(f"skipping unreadable file ({len(self.corrupt)} so far): {e}", stacklevel=2)
                continue
            return self.transform(item) if self.transform is not None else item
        raise SfdaError("no readable image in the dataset: every file failed to decode; check the --data-root")
