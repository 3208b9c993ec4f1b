"""Segmentation metrics: one-bincount confusion matrix, IoU per class, mIoU, the printed table.

Pure functions on arrays; reports and plots live in ``sfda_deploy/report.py``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

IGNORE = 255


def confusion_matrix(pred, label, num_classes: int) -> torch.Tensor:
    """``[C,C]`` int64 counts, rows = ground truth, columns = prediction; label 255 (and ≥ C) ignored.

    Args:
        pred: predicted class indices, any shape (tensor or array).
        label: ground-truth indices, same shape.
    """
    pred = torch.as_tensor(pred).reshape(-1).long()
    label = torch.as_tensor(label).reshape(-1).long()
    keep = (label >= 0) & (label < num_classes)
    index = label[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU of each class = TP / (TP + FP + FN); NaN for classes absent from both GT and prediction."""
    cm = cm.double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1) - tp
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean IoU over classes present in GT or prediction (cityscapesscripts' convention: NaN skipped)."""
    ious = iou_per_class(cm)
    valid = ~torch.isnan(ious)
    return float(ious[valid].mean()) if valid.any() else float("nan")


def pixel_accuracy(cm: torch.Tensor) -> float:
    total = cm.sum()
    return float(cm.diag().sum() / total) if total > 0 else float("nan")


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches (kept on the predictions' device)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.mat: torch.Tensor | None = None

    def update(self, pred, label) -> None:
        cm = confusion_matrix(pred, label, self.num_classes).cpu()
        self.mat = cm if self.mat is None else self.mat + cm

    def result(self, names: Sequence[str]) -> dict:
        """``{"miou": %, "pixel_acc": %, "iou": {name: % or None}, "confusion": [[...]]}``."""
        mat = self.mat if self.mat is not None else torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
        ious = iou_per_class(mat)
        return {
            "miou": round(100 * mean_iou(mat), 2),
            "pixel_acc": round(100 * pixel_accuracy(mat), 2),
            "iou": {n: (None if np.isnan(v) else round(100 * float(v), 2)) for n, v in zip(names, ious.tolist())},
            "confusion": mat.tolist(),
        }


def format_table(rows: dict[str, dict], names: Sequence[str]) -> str:
    """A per-class IoU table: one column per row name (e.g. 'source', 'fog'), last line mIoU.

    Args:
        rows: ``{row name: result dict from ConfusionMatrix.result}``.
    """
    cols = list(rows)
    width = max(len(n) for n in list(names) + ["mIoU"]) + 2
    lines = ["class".ljust(width) + "".join(c[:10].rjust(11) for c in cols)]
    for n in names:
        cells = []
        for c in cols:
            v = rows[c]["iou"].get(n)
            cells.append(("-" if v is None else f"{v:.1f}").rjust(11))
        lines.append(n.ljust(width) + "".join(cells))
    lines.append("mIoU".ljust(width) + "".join(f"{rows[c]['miou']:.1f}".rjust(11) for c in cols))
    return "\n".join(lines)
