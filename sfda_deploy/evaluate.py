"""Evaluation: a model, or saved prediction PNGs, against a labelled split → per-class IoU.

``evaluate_model`` and ``evaluate_predictions`` are the loops; ``run_evaluate`` (``sfda-deploy
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
from sfda_deploy.messages import plural, say
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


# ---- sfda-deploy evaluate ---------------------------------------------------------------------------
def _check_mode(cfg) -> None:
    if bool(cfg.checkpoint) == bool(cfg.predictions):
        raise SfdaError("pass exactly one of --checkpoint CKPT (run a model) or --predictions DIR "
                        "(score saved label maps)")
    if cfg.imgsz and (cfg.predictions or min(cfg.imgsz) < 1):
        raise SfdaError(f"--imgsz {' '.join(map(str, cfg.imgsz))} needs --checkpoint and a positive H W, "
                        "e.g. --imgsz 512 1024")
    from sfda_deploy.data import TARGETS, is_labelled

    if cfg.target in TARGETS and not is_labelled(cfg.target):
        labelled = ", ".join(t for t in TARGETS if is_labelled(t))
        raise SfdaError(f"--target {cfg.target} has no labels to evaluate against: use a labelled one ({labelled})")


def _check_class_set(meta: ModelMeta, class_set: Optional[str], checkpoint: str) -> ClassSet:
    """The checkpoint's class set, checked against its own class count and the asked one."""
    classes = meta.classes
    if class_set is not None and get_class_set(class_set).num_classes != classes.num_classes:
        asked = get_class_set(class_set)
        raise SfdaError(f"class-count mismatch: {checkpoint} predicts {classes.num_classes} classes ({classes.name}) "
                        f"but --class-set {asked.name} has {asked.num_classes}: drop --class-set to evaluate "
                        f"on the checkpoint's classes")
    return classes


def _subset(dataset, max_images: Optional[int]):
    if max_images is None or max_images >= len(dataset):
        return dataset
    if max_images < 1:
        raise SfdaError(f"--max-images {max_images} must be at least 1")
    dataset.pairs = dataset.pairs[:max_images]  # first N in the dataset's fixed order
    return dataset


def run_evaluate(cfg) -> Path:
    """``sfda-deploy evaluate``: writes ``metrics.json``, ``table.txt``, ``iou.png`` and ``confusion.png``
    to ``runs/evaluate/<name>`` and prints the per-class table. Returns the run directory."""
    from torch.utils.data import DataLoader

    from sfda_deploy.data import build_dataset
    from sfda_deploy.report import write_eval_report
    from sfda_deploy.config_build import save_config
    from sfda_deploy.runs import new_run_dir, remove_if_unused

    _check_mode(cfg)
    if cfg.checkpoint:
        from sfda_deploy.checkpoint import load_model
        from sfda_deploy.device import select_device

        device = select_device(cfg.device)
        model, meta = load_model(cfg.checkpoint, device)
        classes = _check_class_set(meta, cfg.class_set, cfg.checkpoint)
    else:
        classes = get_class_set(cfg.class_set or "cityscapes19")
        prediction_lut(classes, cfg.pred_format)
    dataset = _subset(build_dataset(cfg.target, cfg.data_root, cfg.split, class_set=classes.name), cfg.max_images)
    run_dir = new_run_dir("evaluate", cfg.name)  # before the long part: an unwritable place fails fast
    try:
        if cfg.checkpoint:
            loader = DataLoader(dataset, batch_size=cfg.batch, shuffle=False, num_workers=cfg.workers)
            result = evaluate_model(model, meta, loader, device, imgsz=tuple(cfg.imgsz) if cfg.imgsz else None)
        else:
            result = evaluate_predictions(dataset, cfg.predictions, classes, cfg.pred_format).result(classes.names)
    except BaseException:
        remove_if_unused(run_dir)  # nothing was written: leave no empty run behind
        raise
    source = {"checkpoint": cfg.checkpoint} if cfg.checkpoint else {"predictions": cfg.predictions,
                                                                     "pred_format": cfg.pred_format}
    extra = {**source, "target": cfg.target, "data_root": str(cfg.data_root), "split": cfg.split,
             "class_set": classes.name, "images": len(dataset)}
    save_config(run_dir, cfg)
    what = Path(cfg.checkpoint).name if cfg.checkpoint else f"predictions {cfg.predictions}"
    title = f"{what} on {cfg.target} {cfg.split} ({plural(len(dataset), 'image')}, {cfg.data_root})"
    table = write_eval_report(run_dir, result, classes.names, cfg.split, extra, title=title)
    say(table)
    say(f"mIoU {result['miou']:.2f} over {plural(len(dataset), 'image')} ({cfg.target} {cfg.split}) → {run_dir}")
    return run_dir
