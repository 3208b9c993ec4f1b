"""``sfda-deploy evaluate``: the mIoU of any model file on a whole labelled split, through the backends
``segment`` runs it with (``runtime.backends``: a checkpoint or run directory on torch, an ``.onnx`` of any
precision on ONNX Runtime, an ``.engine`` on TensorRT), or of saved prediction PNGs.

A model runs at the input size it records (an export's fixed size, a checkpoint's training size), as
``segment`` does; ``--imgsz`` overrides it. Images are resized (stretched) to that size, the network's
logits are resized back to the label's size (bilinear, the model's ``align_corners``) and argmax'd there; a
mask model's label map is resized by nearest neighbour. A checkpoint runs as the fp32 reference (no bf16,
no folding), so its score is the checkpoint's own.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sfda_deploy.classes import get_class_set
from sfda_deploy.device import device_name
from sfda_deploy.evaluate import (
    check_class_set,
    check_mode,
    evaluate_predictions,
    evaluation_set,
    prediction_lut,
    write_evaluation,
)
from sfda_deploy.messages import say
from sfda_deploy.metrics import ConfusionMatrix
from sfda_deploy.progress import progress as bar
from sfda_deploy.runs import new_run_dir, remove_if_unused
from sfda_deploy.runtime.backends import describe, load_backend, resolve_model_path
from sfda_deploy.runtime.io import size_mismatch_note
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


def run_evaluate(cfg) -> Path:
    """``sfda-deploy evaluate``: writes ``metrics.json``, ``table.txt``, ``iou.png`` and ``confusion.png`` to
    ``runs/evaluate/<name>`` and prints the per-class table. Returns the run directory."""
    check_mode(cfg)
    if not cfg.checkpoint:
        classes = get_class_set(cfg.class_set or "cityscapes19")
        prediction_lut(classes, cfg.pred_format)
        dataset = evaluation_set(cfg, classes)
        run_dir = new_run_dir("evaluate", cfg.name)
        try:
            result = evaluate_predictions(dataset, cfg.predictions, classes, cfg.pred_format).result(classes.names)
        except BaseException:
            remove_if_unused(run_dir)
            raise
        write_evaluation(run_dir, cfg, result, classes, len(dataset), f"predictions {cfg.predictions}",
                         {"predictions": cfg.predictions, "pred_format": cfg.pred_format})
        return run_dir
    path = str(resolve_model_path(cfg.checkpoint, engine=device_name(cfg.device) != "cpu"))
    backend = load_backend(path, "auto", cfg.device, tuple(cfg.imgsz) if cfg.imgsz else None, cfg.batch,
                           reference=True)
    try:
        classes = check_class_set(backend.meta, cfg.class_set, path)
        dataset = evaluation_set(cfg, classes)
        note = size_mismatch_note(tuple(dataset[0]["image"].shape[-2:]), backend.input_size,
                                  tuple(backend.meta.input_size))
        if note:
            say(f"note: {note}")
        run_dir = new_run_dir("evaluate", cfg.name)  # before the long part: an unwritable place fails fast
        try:
            result = evaluate_backend(backend, dataset, cfg.workers, desc="eval")
        except BaseException:
            remove_if_unused(run_dir)  # nothing was written: leave no empty run behind
            raise
        model = describe(backend)
    finally:
        backend.close()
    size = "x".join(str(v) for v in backend.input_size)
    write_evaluation(run_dir, cfg, result, classes, len(dataset), f"{Path(path).name} ({model['backend']}, {size})",
                     {"checkpoint": path, "model": model})
    return run_dir

