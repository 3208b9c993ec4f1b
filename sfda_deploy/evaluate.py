"""Evaluation loops: a model over a labelled dataset → per-class IoU (I/O lives in run_evaluate)."""
from __future__ import annotations

import torch
from tqdm import tqdm

from sfda_deploy.metadata import ModelMeta
from sfda_deploy.metrics import ConfusionMatrix


@torch.no_grad()
def evaluate_model(model, meta: ModelMeta, loader, device="cpu", progress: bool = True, desc: str = "eval") -> dict:
    """Single-scale evaluation: logits resized to the label size, argmax, one confusion matrix.

    Args:
        loader: yields dicts with ``image`` uint8 ``[B,3,H,W]`` RGB and ``label`` int64 ``[B,h,w]``.
    Returns:
        ``ConfusionMatrix.result`` dict (miou, pixel_acc, iou per class name, confusion).
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(meta.num_classes)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        logits = model(meta.normalize(images))
        if logits.shape[-2:] != labels.shape[-2:]:
            logits = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear",
                                                     align_corners=meta.align_corners)
        cm.update(logits.argmax(1), labels)
    model.train(was_training)
    return cm.result(meta.classes.names)
