"""Tiny on-disk datasets in every layout ``sfda_deploy.data`` reads (written by the tests themselves).

Every labelled layout gets the same raw label pattern: vertical bands of the ids given, so a test can
check known pixels (band ``k`` covers columns ``[k*W/n, (k+1)*W/n)``). Images are random RGB noise
written with cv2 (which stores BGR), so a test can also check the channel order of what is read back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

SIZE = (16, 24)  # H, W

# Raw ids per layout, chosen to hit mapped classes, an ignored id and (for 16-bit) an id beyond 255.
CITYSCAPES_IDS = (7, 26, 0, 33, 24, 21)      # labelIds → trainIds 0, 13, 255, 18, 11, 8
SYNTHIA_IDS = (3, 8, 0, 11, 16, 300)         # SYNTHIA ids → trainIds 0, 13, 255, 18, 9, 255
BDD_IDS = (0, 13, 255, 18, 11, 8)            # BDD100K masks hold trainIds


def bands(ids: Sequence[int], size=SIZE, dtype=np.uint8) -> np.ndarray:
    """``[H,W]`` raw label: ``len(ids)`` equal vertical bands, band ``k`` = ``ids[k]``."""
    h, w = size
    out = np.empty((h, w), dtype)
    edges = np.linspace(0, w, len(ids) + 1).astype(int)
    for k, v in enumerate(ids):
        out[:, edges[k]:edges[k + 1]] = v
    return out


def band_pixel(k: int, n: int, size=SIZE) -> tuple[int, int]:
    """(row, col) of a pixel inside band ``k`` of ``n``."""
    h, w = size
    edges = np.linspace(0, w, n + 1).astype(int)
    return h // 2, (edges[k] + edges[k + 1]) // 2


def rgb(seed: int, size=SIZE) -> np.ndarray:
    """``[H,W,3]`` uint8 RGB noise (deterministic)."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def write_rgb(path: Path, image: np.ndarray) -> Path:
    """Write an RGB array (cv2 wants BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)), path
    return path


def write_raw(path: Path, array: np.ndarray) -> Path:
    """Write an array as stored (label PNGs: 8/16-bit, 1 or 3 channels in cv2's BGR order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def corrupt(path: Path) -> Path:
    """Overwrite a file with bytes no image decoder accepts."""
    path.write_bytes(b"not an image at all")
    return path


def write_cityscapes(root: Path, split: str = "val", n: int = 2, city: str = "aachen",
                     ids: Sequence[int] = CITYSCAPES_IDS, size=SIZE) -> Path:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``."""
    for i in range(n):
        stem = f"{city}_{i:06d}_000019"
        write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb(i, size))
        write_raw(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", bands(ids, size))
    return root


def write_palette(path: Path, array: np.ndarray) -> Path:
    """A palette ("P" mode) PNG whose indices are ``array`` and whose colours are NOT the indices, as
    GTA5's published label files are (a decoder that expands the palette gets colours, not ids)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array.astype(np.uint8), mode="P")
    image.putpalette([(7 * i + 40) % 256 for i in range(256) for _ in range(3)])
    image.save(path)
    return path


def write_gta5(root: Path, n: int = 3, ids: Sequence[int] = CITYSCAPES_IDS, palette: bool = False) -> Path:
    """``images/00001.png`` + ``labels/00001.png`` (Cityscapes labelIds; ``palette``: as palette indices)."""
    for i in range(1, n + 1):
        write_rgb(root / "images" / f"{i:05d}.png", rgb(i))
        (write_palette if palette else write_raw)(root / "labels" / f"{i:05d}.png", bands(ids))
    return root


def synthia_label(ids: Sequence[int] = SYNTHIA_IDS, instance: int = 7) -> np.ndarray:
    """``[H,W,3]`` uint16 as cv2 writes it (BGR): class ids in R (index 2), instance ids in G, 0 in B."""
    lab = np.zeros((*SIZE, 3), np.uint16)
    lab[..., 2] = bands(ids, dtype=np.uint16)
    lab[..., 1] = instance
    return lab


def write_synthia(root: Path, n: int = 3, ids: Sequence[int] = SYNTHIA_IDS) -> Path:
    """``RGB/0000000.png`` + ``GT/LABELS/0000000.png`` (16-bit, class id in the first channel)."""
    for i in range(n):
        write_rgb(root / "RGB" / f"{i:07d}.png", rgb(i))
        write_raw(root / "GT" / "LABELS" / f"{i:07d}.png", synthia_label(ids))
    return root


def write_acdc(root: Path, split: str = "val", conditions: Sequence[str] = ("fog", "night"),
               ids: Sequence[int] = CITYSCAPES_IDS) -> Path:
    """``rgb_anon/<cond>/<split>/<seq>/*_rgb_anon.png`` + ``gt/<cond>/<split>/<seq>/*_gt_labelIds.png``,
    one image per condition, plus a ``<split>_ref`` image that must not be read."""
    for c, cond in enumerate(conditions):
        seq = f"GOPR{c:04d}"
        stem = f"{seq}_frame_{c:06d}"
        write_rgb(root / "rgb_anon" / cond / split / seq / f"{stem}_rgb_anon.png", rgb(c))
        write_raw(root / "gt" / cond / split / seq / f"{stem}_gt_labelIds.png", bands(ids))
        write_rgb(root / "rgb_anon" / cond / f"{split}_ref" / seq / f"{stem}_ref_rgb_anon.png", rgb(c + 50))
    return root


def write_bdd100k(root: Path, split: str = "val", n: int = 2, ids: Sequence[int] = BDD_IDS) -> Path:
    """``images/10k/<split>/*.jpg`` + ``labels/sem_seg/masks/<split>/<stem>.png`` (trainIds)."""
    for i in range(n):
        stem = f"7d{i:06d}-bdd"
        write_rgb(root / "images" / "10k" / split / f"{stem}.jpg", rgb(i))
        write_raw(root / "labels" / "sem_seg" / "masks" / split / f"{stem}.png", bands(ids))
    return root


def write_folder(root: Path, n: int = 3) -> Path:
    """Unlabelled images, some in a sub-folder, plus a non-image file that must be ignored."""
    for i in range(n):
        sub = root / "sub" if i % 2 else root
        write_rgb(sub / f"frame_{i:03d}.{'jpg' if i == 2 else 'png'}", rgb(i))
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("not an image")
    return root


def write_video(path: Path, frames: int = 6, size=SIZE) -> Path:
    """An MJPG ``.avi`` whose frame ``i`` is a flat grey of level ``40 * i``."""
    h, w = size
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((h, w, 3), 40 * i, np.uint8))
    writer.release()
    return path
