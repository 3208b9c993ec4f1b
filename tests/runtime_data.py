"""Tiny models and media for the runtime tests: a checkpoint, ONNX files, videos, image folders."""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import onnx
import torch

from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.export.onnx import export_module
from sfda_deploy.metadata import ModelMeta, attach_to_onnx
from sfda_deploy.models import build_model

SIZE = (32, 64)  # the tiny model's input size (H, W)


def tiny_model(num_classes: int = 19) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("tiny", num_classes=num_classes).eval()


def make_checkpoint(path: Path, **meta) -> Path:
    meta.setdefault("input_size", SIZE)
    return save_checkpoint(path, tiny_model(meta.get("num_classes", 19)), ModelMeta(arch="tiny", **meta))


@functools.lru_cache(maxsize=None)
def _exported(dynamic: bool, channels: int) -> bytes:
    """The tiny model through the production exporter (``export.onnx.export_module``, torch's dynamo
    exporter), serialized; exported once per test session for each (dynamic, channels)."""
    return export_module(tiny_model(channels), SIZE, 1, dynamic, 18, "logits").SerializeToString()


def make_onnx(path: Path, meta: ModelMeta | None = None, dynamic: bool = True, channels: int = 19,
              with_meta: bool = True) -> Path:
    """The tiny model as ONNX (dynamic batch/H/W unless ``dynamic=False``), metadata attached."""
    meta = meta or ModelMeta(arch="tiny", input_size=SIZE)
    proto = onnx.load_from_string(_exported(dynamic, channels))
    if with_meta:
        attach_to_onnx(proto, meta.replace(extra={"output": "logits", "dynamic": dynamic,
                                                  "input_name": "images", "output_name": "logits"}))
    onnx.save(proto, str(path))
    return path


def frame_for(i: int, size=(48, 80)) -> np.ndarray:
    """Frame ``i`` (BGR): a uniform grey of level 20*i, so the order survives lossy coding."""
    return np.full((*size, 3), 20 * i, np.uint8)


def make_video(path: Path, n: int = 10, fps: float = 12.0, size=(48, 80)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size[1], size[0]))
    for i in range(n):
        writer.write(frame_for(i, size))
    writer.release()
    return path


def make_images(folder: Path, n: int = 3, size=(40, 60)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [folder / f"img{i}.png" for i in range(n)]
    for p in paths:
        cv2.imwrite(str(p), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    return paths


def video_info(path: Path) -> tuple[int, float, tuple[int, int], list[float]]:
    """(frames actually decoded, fps, (H, W), mean grey level of each frame) of a video file."""
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    levels, size = [], None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        size = frame.shape[:2]
        levels.append(float(frame.mean()))
    cap.release()
    return len(levels), fps, size, levels
