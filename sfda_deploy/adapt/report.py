"""Run artefacts: loss curves, before/after per-class IoU chart, pseudo-label previews (I/O only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sfda_deploy.report import plot_iou_bars, pyplot, save_figure
from sfda_deploy.runs import atomic_path


def plot_losses(path: Path, history: list[dict]) -> None:
    """One curve per loss name over the run's global iteration (stages one after another)."""
    if not history:
        return
    plt = pyplot()
    names = sorted({k for h in history for k in h if k not in ("stage", "iter")})
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(history))
    for n in names:
        y = np.array([h.get(n, np.nan) for h in history], dtype=float)
        ax.plot(x, y, label=n, linewidth=0.8)
    # stage boundaries
    for i in range(1, len(history)):
        if history[i]["stage"] != history[i - 1]["stage"]:
            ax.axvline(i, color="gray", linestyle=":")
    ax.set_xlabel("iteration (all stages)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def plot_iou_chart(path: Path, before: dict, after: dict) -> None:
    """Grouped bars of per-class IoU before and after adaptation."""
    plot_iou_bars(path, {"before": before, "after": after}, list(after["iou"]))


def save_preview(path: Path, previews: dict, meta) -> None:
    """First image of the batch: image | pseudo label | prediction, palette-coloured, as one PNG."""
    import cv2

    lut = meta.classes.palette_array()
    image = previews["image"][0].detach().float().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    panels = [image] + [lut[previews[k][0].detach().cpu().numpy().astype(np.int64).clip(0, 255)]
                        for k in ("pseudo", "pred") if k in previews]
    strip = np.concatenate(panels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        tmp.write_bytes(buf.tobytes())


def selection_axis(points: list[dict]) -> list[int]:
    """Global iteration of each scoring point: a stage's iterations counted after the earlier stages'."""
    ends: dict[str, int] = {}
    for p in points:
        ends[p["stage"]] = max(ends.get(p["stage"], 0), p["iter"])
    offsets, total = {}, 0
    for stage, end in ends.items():
        offsets[stage], total = total, total + end
    return [offsets[p["stage"]] + p["iter"] for p in points]


def plot_selection(path: Path, record: dict) -> None:
    """The selection criterion (left axis) and, where labels exist, mIoU (right axis) over the run's
    iterations; the source's values as dashed lines, the shipped point starred."""
    points = record["points"]
    if not points:
        return
    plt = pyplot()
    crit, x = record["criterion"], selection_axis(points)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(x, [p["scores"][crit] for p in points], "o-", color="C0", label=f"{crit} (label-free)")
    ax.set_xlabel("iteration (all stages)")
    ax.set_ylabel(crit, color="C0")
    ref = record.get("reference")
    if ref:
        ax.axhline(ref["scores"][crit], color="C0", linestyle="--", linewidth=0.8, label=f"source {crit}")
    shipped = record["shipped"]
    if shipped.get("stage") is not None and not shipped.get("reference"):
        i = next(k for k, p in enumerate(points) if (p["stage"], p["iter"]) == (shipped["stage"], shipped["iter"]))
        ax.plot([x[i]], [points[i]["scores"][crit]], "*", color="C3", markersize=14, label="shipped")
    if any(p.get("miou") is not None for p in points):
        ax2 = ax.twinx()
        ax2.plot(x, [p.get("miou") if p.get("miou") is not None else np.nan for p in points], "s-", color="C1",
                 label="mIoU (labels)")
        if ref and ref.get("miou") is not None:
            ax2.axhline(ref["miou"], color="C1", linestyle="--", linewidth=0.8)
        ax2.set_ylabel("mIoU %", color="C1")
        ax2.legend(loc="lower right", fontsize=7)
    title = f"shipped: {'source (fallback)' if shipped.get('reference') else shipped.get('stage')}"
    ax.set_title(title + (f" — {record['reason']}" if record.get("reason") else ""), fontsize=8)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
