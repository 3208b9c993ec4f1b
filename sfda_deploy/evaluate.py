"""Evaluation: a model, or saved prediction PNGs, against a labelled split → per-class IoU.

``evaluate_model`` and ``evaluate_predictions`` are the loops; ``commands.evaluate.run_evaluate`` (``sfda-deploy
evaluate``) adds the files. A corrupt image or label stops the evaluation with an error naming the
file: skipping it would silently score a different set of images than the one asked for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sfda_deploy.classes import ClassSet, get_class_set
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.metrics import ConfusionMatrix
from sfda_deploy.progress import progress as bar

PRED_FORMATS = ("labelid", "trainid")


@torch.no_grad()
def evaluate_model(model, meta: ModelMeta, loader, device="cpu", progress: bool = True, desc: str = "eval",
                   imgsz: Optional[tuple[int, int]] = None) -> dict:
    """Single-scale evaluation: logits resized to the label size, argmax, one confusion matrix.

    Args:
        loader: yields dicts with ``image`` uint8 ``[B,3,H,W]`` RGB and ``label`` int64 ``[B,h,w]``.
        imgsz: ``(H, W)`` the images are resized to (bilinear) before the model, e.g. 512×1024 for the
            DeepLabV2 lineage on 1024×2048 Cityscapes; None: the images' own size.
    Returns:
        ``ConfusionMatrix.result`` dict (miou, pixel_acc, iou per class name, confusion).
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(meta.num_classes)
    for batch in bar(loader, desc=desc, disable=not progress, unit="batch"):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        x = meta.normalize(images)
        if imgsz is not None and tuple(x.shape[-2:]) != tuple(imgsz):
            x = torch.nn.functional.interpolate(x, size=tuple(imgsz), mode="bilinear", align_corners=False)
        logits = model(x)
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                                                     align_corners=meta.align_corners)
        cm.update(logits.argmax(1), labels)
    model.train(was_training)
    return cm.result(meta.classes.names)


def prediction_lut(classes: ClassSet, pred_format: str) -> np.ndarray:
    """``[256]`` uint8: value stored in a prediction PNG → class index (255: none of the classes)."""
    if pred_format not in PRED_FORMATS:
        raise SfdaError(f"unknown --pred-format '{pred_format}': use {' or '.join(PRED_FORMATS)}")
    return classes.labelid_lut() if pred_format == "labelid" else classes.trainid_lut()


def index_predictions(pred_dir: Path) -> dict[str, Path]:
    """``{file stem: path}`` of every PNG under ``pred_dir`` (sub-folders too, e.g. one per city)."""
    if not pred_dir.is_dir():
        raise SfdaError(f"--predictions {pred_dir} is not a directory: pass the folder of <image stem>.png label maps")
    found: dict[str, Path] = {}
    for path in sorted(pred_dir.rglob("*.png")):
        if path.stem in found:
            raise SfdaError(f"two predictions for '{path.stem}' ({found[path.stem]} and {path}): keep one")
        found[path.stem] = path
    if not found:
        raise SfdaError(f"--predictions {pred_dir} holds no .png file: write one <image stem>.png per image")
    return found


def evaluate_predictions(dataset, pred_dir: Path | str, classes: ClassSet, pred_format: str = "labelid",
                         progress: bool = True) -> ConfusionMatrix:
    """Score saved label maps against the dataset's labels.

    Args:
        dataset: a labelled ``ImageDataset`` (``load_label`` gives each image's stem and label).
        pred_dir: one ``<image stem>.png`` per image: single-channel Cityscapes labelIds
            (``labelid``) or trainIds (``trainid``); values of no class count as misses.
    Returns:
        The filled confusion matrix (exact counts; ``.result(names)`` for percentages).
    """
    from sfda_deploy.data.base import read_label  # the same decoder and corrupt-file error as labels

    lut = prediction_lut(classes, pred_format)
    preds = index_predictions(Path(pred_dir))
    stems = [Path(p[0]).stem for p in dataset.pairs]
    missing = [s for s in stems if s not in preds]
    if missing:
        raise SfdaError(f"--predictions {pred_dir} lacks {len(missing)} of {len(stems)} images "
                        f"(e.g. {missing[0]}.png): predict every image of the split")
    cm = ConfusionMatrix(classes.num_classes)
    for index in bar(range(len(dataset)), desc="eval", disable=not progress, unit="image"):
        name, label = dataset.load_label(index)
        raw = read_label(preds[name])
        if raw.ndim != 2:
            raise SfdaError(f"prediction {preds[name]} has {raw.shape[2]} channels: save single-channel "
                            f"{pred_format} PNGs, not colour images")
        if raw.shape != label.shape:
            raise SfdaError(f"prediction {preds[name]} is {raw.shape[1]}x{raw.shape[0]} but its label is "
                            f"{label.shape[1]}x{label.shape[0]}: save predictions at the label size")
        pred = lut[raw] if raw.dtype == np.uint8 else lut[np.minimum(raw, 255)]  # 16-bit: ids > 255 are no class
        cm.update(torch.from_numpy(pred), torch.from_numpy(label))
    return cm


def check_class_set(meta: ModelMeta, class_set: Optional[str], checkpoint: str) -> ClassSet:
    """The checkpoint's class set, checked against its own class count and the asked one."""
    classes = meta.classes
    if class_set is not None and get_class_set(class_set).num_classes != classes.num_classes:
        asked = get_class_set(class_set)
        raise SfdaError(f"class-count mismatch: {checkpoint} predicts {classes.num_classes} classes ({classes.name}) "
                        f"but --class-set {asked.name} has {asked.num_classes}: drop --class-set to evaluate "
                        f"on the checkpoint's classes")
    return classes
