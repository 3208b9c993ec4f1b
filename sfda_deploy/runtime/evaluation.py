"""A model file scored on a whole labelled split (``evaluate_backend``; the command is
``commands.evaluate.run_evaluate``), through the backends ``segment`` runs it with (``runtime.backends``: a
checkpoint or run directory on torch, an ``.onnx`` of any precision on ONNX Runtime, an ``.engine`` on TensorRT).

A model runs at the input size it records (an export's fixed size, a checkpoint's training size), as
``segment`` does; ``--imgsz`` overrides it. Images are resized (stretched) to that size, the network's
logits are resized back to the label's size (bilinear, the model's ``align_corners``) and argmax'd there; a
mask model's label map is resized by nearest neighbour. A checkpoint runs as the fp32 reference (no bf16,
no folding), so its score is the checkpoint's own.
"""
from __future__ import annotations

import numpy as np
import torch

from sfda_deploy.metrics import ConfusionMatrix
from sfda_deploy.progress import progress as bar
from sfda_deploy.runtime.render import resize_labels


def _items(batch: list) -> list:
    """DataLoader collate: the items as they are (images of a split may differ in size)."""
    return batch


def labels_at(output: np.ndarray, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """One image's network output → class ids ``[H,W]`` at the label's ``size``: logits ``[C,h,w]`` resized
    (bilinear) then argmax'd, or a label map ``[h,w]`` resized by nearest neighbour."""
    if output.ndim == 3:
        logits = torch.from_numpy(np.ascontiguousarray(output, np.float32))[None]
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = torch.nn.functional.interpolate(logits, size=tuple(size), mode="bilinear",
                                                     align_corners=align_corners)
        return logits[0].argmax(0)
    return torch.from_numpy(resize_labels(np.ascontiguousarray(output), size).astype(np.int64))


def evaluate_backend(backend, dataset, workers: int = 0, progress: bool = True, desc: str = "eval") -> dict:
    """Score ``backend`` (``runtime.backends.load_backend``) on every item of a labelled ``dataset``.

    Returns:
        ``ConfusionMatrix.result`` dict (miou, pixel_acc, iou per class name, confusion).
    """
    from torch.utils.data import DataLoader

    meta = backend.meta
    cm = ConfusionMatrix(meta.num_classes)
    loader = DataLoader(dataset, batch_size=backend.batch, shuffle=False, num_workers=workers, collate_fn=_items)
    for items in bar(loader, desc=desc, disable=not progress, unit="batch"):
        frames = [item["image"].permute(1, 2, 0).numpy() for item in items]  # RGB uint8 [H,W,3]
        outputs = backend.outputs(backend.preprocess(frames))[: len(items)]  # a static batch is padded
        for item, output in zip(items, outputs):
            label = item["label"]
            cm.update(labels_at(output, tuple(label.shape[-2:]), meta.align_corners), label)
    return cm.result(meta.classes.names)
