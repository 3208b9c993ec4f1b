"""Segmentation metrics: one-bincount confusion matrix, IoU per class, mIoU, the printed table.

Pure functions on arrays; reports and plots live in ``sfda_deploy/report.py``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def confusion_matrix(pred, label, num_classes: int) -> torch.Tensor:
    """``[C,C+1]`` int64 counts, rows = ground truth, columns = prediction; label 255 (and ≥ C) ignored.

    Column ``C`` counts pixels predicted as none of the classes (255, or a label id outside the class
    set in saved predictions): they are false negatives of their ground-truth class and false
    positives of no class, as in cityscapesscripts' pixel-level evaluation.

    Args:
        pred: predicted class indices, any shape (tensor or array).
        label: ground-truth indices, same shape.
    """
    pred = torch.as_tensor(pred).reshape(-1).long()
    label = torch.as_tensor(label).reshape(-1).long()
    if pred.shape != label.shape:
        raise ValueError(f"prediction has {pred.numel()} pixels, label {label.numel()}")
    keep = (label >= 0) & (label < num_classes)
    pred, label = pred[keep], label[keep]
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, torch.full_like(pred, num_classes))
    index = label * (num_classes + 1) + pred
    return torch.bincount(index, minlength=num_classes * (num_classes + 1)).reshape(num_classes, num_classes + 1)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """IoU of each class = TP / (TP + FP + FN); NaN for classes absent from both GT and prediction.

    Args:
        cm: ``[C,C]`` or ``[C,C+1]`` (last column: predicted as no class) from :func:`confusion_matrix`.
    Returns:
        ``[C]`` float64.
    """
    cm = cm.double()
    c = cm.shape[0]
    tp = cm[:, :c].diag()
    denom = cm[:, :c].sum(0) + cm.sum(1) - tp  # column (predicted) + row (ground truth) - overlap
    return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(cm: torch.Tensor) -> float:
    """Mean IoU over classes present in GT or prediction (cityscapesscripts' convention: NaN skipped)."""
    ious = iou_per_class(cm)
    valid = ~torch.isnan(ious)
    return float(ious[valid].mean()) if valid.any() else float("nan")


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Correct pixels / labelled pixels."""
    total = cm.sum()
    return float(cm[:, : cm.shape[0]].diag().sum() / total) if total > 0 else float("nan")


def recall_per_class(cm: torch.Tensor) -> torch.Tensor:
    """Share of each ground-truth class's pixels predicted as that class; NaN for a class with no pixels.

    Args:
        cm: ``[C,C]`` or ``[C,C+1]`` from :func:`confusion_matrix` (rows ground truth).
    Returns:
        ``[C]`` float64 in [0, 1].
    """
    cm = cm.double()
    rows = cm.sum(1)
    tp = cm[:, : cm.shape[0]].diag()
    return torch.where(rows > 0, tp / rows.clamp(min=1), torch.full_like(tp, float("nan")))


def prediction_share(cm: torch.Tensor) -> torch.Tensor:
    """Share of all labelled pixels predicted as each class (``[C]`` float64; the no-class column left out)."""
    cm = cm.double()
    return cm[:, : cm.shape[0]].sum(0) / cm.sum().clamp(min=1)


def reachable_gap_share(source_iou, oracle_iou, reachable) -> float:
    """Share of the source → oracle mIoU gap closed if every ``reachable`` class reached its oracle IoU
    (or kept its source IoU where that is higher) and every other class kept its source IoU.

    A ceiling for self-training when the unreachable classes are those the source model (almost) never
    predicts correctly: pseudo labels are the model's own arg-max, so they rarely hold such a class.
    Classes whose source or oracle IoU is NaN (absent) are left out of both means.

    Args:
        source_iou, oracle_iou: ``[C]`` IoUs (any scale, the same for both).
        reachable: ``[C]`` bool.
    Returns:
        The share in [0, 1] (may exceed 1 where reachable classes beat the oracle); NaN without a gap.
    """
    src = torch.as_tensor(source_iou, dtype=torch.float64)
    orc = torch.as_tensor(oracle_iou, dtype=torch.float64)
    valid = ~(torch.isnan(src) | torch.isnan(orc))
    src, orc, reach = src[valid], orc[valid], torch.as_tensor(reachable, dtype=torch.bool)[valid]
    gap = float(orc.mean() - src.mean())
    if gap <= 0:
        return float("nan")
    best = torch.where(reach, torch.maximum(src, orc), src)
    return float(best.mean() - src.mean()) / gap


def confidence_errors(confident, correct) -> dict[str, float]:
    """How often confident and unsure pixels are wrong (all inputs ``[N]`` bool, labelled pixels only).

    Returns:
        ``{"confident": share of pixels confident, "confident_wrong": share of those wrong,
        "unsure_wrong": share of the other pixels wrong}``, each in [0, 1] (NaN for an empty group).
    """
    confident = torch.as_tensor(confident, dtype=torch.bool).reshape(-1)
    wrong = ~torch.as_tensor(correct, dtype=torch.bool).reshape(-1)

    def share(part, of):
        n = int(of.sum())
        return float((part & of).sum()) / n if n else float("nan")
    return {"confident": share(confident, torch.ones_like(confident)),
            "confident_wrong": share(wrong, confident), "unsure_wrong": share(wrong, ~confident)}


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches (kept on the predictions' device)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.mat: torch.Tensor | None = None

    def update(self, pred, label) -> None:
        cm = confusion_matrix(pred, label, self.num_classes).cpu()
        self.mat = cm if self.mat is None else self.mat + cm

    def result(self, names: Sequence[str]) -> dict:
        """The metrics of everything seen so far.

        Returns:
            ``{"miou": %, "pixel_acc": %, "iou": {name: % or None}, "confusion": [C][C] counts
            (rows ground truth, columns prediction), "unassigned": [C] pixels of each ground-truth
            class predicted as no class}``. Percentages are rounded to 2 decimals; ``None`` marks a
            class absent from both ground truth and prediction (left out of the mean).
        """
        c = self.num_classes
        mat = self.mat if self.mat is not None else torch.zeros(c, c + 1, dtype=torch.long)
        ious = iou_per_class(mat)
        return {
            "miou": round(100 * mean_iou(mat), 2),
            "pixel_acc": round(100 * pixel_accuracy(mat), 2),
            "iou": {n: (None if np.isnan(v) else round(100 * float(v), 2)) for n, v in zip(names, ious.tolist())},
            "confusion": mat[:, :c].tolist(),
            "unassigned": mat[:, c].tolist(),
        }


def absent_classes(result: dict, names: Sequence[str]) -> list[str]:
    """Classes with no labelled pixel in a ``ConfusionMatrix.result`` (their IoU is 0 or None, but says
    nothing about the model): ground-truth rows of the confusion (and ``unassigned``) summing to 0."""
    if "confusion" not in result:
        return [n for n in names if result["iou"].get(n) is None]
    unassigned = result.get("unassigned") or [0] * len(names)
    return [n for n, row, extra in zip(names, result["confusion"], unassigned) if sum(row) + extra == 0]


def format_table(rows: dict[str, dict], names: Sequence[str]) -> str:
    """A per-class IoU table: one column per row name (e.g. 'source', 'fog'), last line mIoU.

    Args:
        rows: ``{row name: result dict from ConfusionMatrix.result}``.
    """
    cols = list(rows)
    width = max(len(n) for n in list(names) + ["mIoU"]) + 2
    cell = max([10] + [len(c) for c in cols]) + 1  # every column name whole (e.g. "autumn-rain")
    lines = ["class".ljust(width) + "".join(c.rjust(cell) for c in cols)]
    for n in names:
        cells = []
        for c in cols:
            v = rows[c]["iou"].get(n)
            cells.append(("-" if v is None else f"{v:.1f}").rjust(cell))
        lines.append(n.ljust(width) + "".join(cells))
    lines.append("mIoU".ljust(width) + "".join(f"{rows[c]['miou']:.1f}".rjust(cell) for c in cols))
    return "\n".join(lines)
