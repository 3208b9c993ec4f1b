"""Evaluation artefacts: the per-class table (printed, JSON), per-class IoU bars, the confusion matrix.

I/O only; the numbers come from ``sfda_deploy.metrics``. Figures are drawn with matplotlib's Agg
backend (no display needed) and written atomically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sfda_deploy.metrics import absent_classes, format_table
from sfda_deploy.runs import atomic_path, write_json, write_text


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported here: only commands that plot pay for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path | str, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG via a temporary name, then close it."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return Path(path)


def plot_iou_bars(path: Path | str, rows: dict[str, dict], names: Sequence[str] | None = None, title: str = "",
                  absent: Sequence[str] | None = None) -> Path:
    """Per-class IoU bars, one group per class and one bar per row (e.g. before/after, or one model).

    Args:
        rows: ``{label: ConfusionMatrix.result dict}``; the legend shows each row's mIoU.
        names: classes in order (default: the first row's).
        title: which data and which model (drawn above the bars).
        absent: classes without a labelled pixel (default: from the first row's confusion): no bar, a grey
            "absent" mark and a grey name, not a bar at 0.
    """
    plt = pyplot()
    names = list(names or next(iter(rows.values()))["iou"])
    absent = set(absent if absent is not None else absent_classes(next(iter(rows.values())), names))
    x = np.arange(len(names))
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 4.4))
    for k, (label, result) in enumerate(rows.items()):
        values = [np.nan if n in absent else (result["iou"].get(n) or 0.0) for n in names]
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, values, width, label=f"{label} ({result['miou']:.1f} mIoU)")
    for i, n in enumerate(names):
        if n in absent:
            ax.text(i, 2, "absent", rotation=90, ha="center", va="bottom", fontsize=7, color="0.55")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    for tick, n in zip(ax.get_xticklabels(), names):
        if n in absent:
            tick.set_color("0.55")
    ax.set_ylabel("IoU %")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper right")
    if title:
        ax.set_title(title, fontsize=9)
    if absent:
        fig.text(0.01, 0.01, "absent: no pixel of the class in the labels (left out of the mIoU or 0 IoU; says "
                 "nothing about the model)", fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.03 if absent else 0, 1, 1))
    return save_figure(fig, path)


def plot_confusion(path: Path | str, result: dict, names: Sequence[str], title: str = "") -> Path:
    """The confusion matrix normalised per ground-truth row (%: where each class's pixels went), titled with
    ``title`` (which model, on which data) and its mIoU.

    A last column "none" appears when some pixels were predicted as no class (``unassigned``).
    """
    plt = pyplot()
    mat = np.asarray(result["confusion"], np.float64)
    cols = list(names)
    unassigned = np.asarray(result.get("unassigned") or [0] * len(names), np.float64)
    if unassigned.any():
        mat = np.concatenate([mat, unassigned[:, None]], axis=1)
        cols.append("none")
    rows = mat.sum(1, keepdims=True)
    share = np.divide(100 * mat, rows, out=np.zeros_like(mat), where=rows > 0)
    size = max(5, 0.55 * len(cols))  # room for two-digit cells in a readable font
    fig, ax = plt.subplots(figsize=(size + 1, size + 0.6))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(np.arange(len(cols)), cols, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(np.arange(len(names)), names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i, j in zip(*np.nonzero(share >= 1)):  # cells under 1 % would only be clutter
        ax.text(j, i, f"{share[i, j]:.0f}", ha="center", va="center", fontsize=7,
                color="white" if share[i, j] > 60 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the ground-truth class")
    heading = f"confusion (% of each ground-truth class), mIoU {result['miou']:.1f}"
    ax.set_title(f"{title}\n{heading}" if title else heading, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def write_eval_report(run_dir: Path, result: dict, names: Sequence[str], label: str, extra: dict | None = None,
                      title: str = "") -> str:
    """Write ``metrics.json`` (result + ``extra``), ``table.txt``, ``iou.png`` and ``confusion.png``.

    Returns:
        The per-class table (the caller prints it).
    """
    table = format_table({label: result}, names)
    write_json(run_dir / "metrics.json", {**(extra or {}), **result})
    write_text(run_dir / "table.txt", table + "\n")
    plot_iou_bars(run_dir / "iou.png", {label: result}, names, title=title)
    plot_confusion(run_dir / "confusion.png", result, names, title=title)
    return table
