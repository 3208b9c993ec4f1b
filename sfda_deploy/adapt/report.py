"""Run artefacts: loss curves, before/after per-class IoU chart, pseudo-label previews (I/O only)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sfda_deploy.report import plot_iou_bars, pyplot, save_figure
from sfda_deploy.runs import atomic_path

# What each method's loss terms are, in words (the keys the methods' steps return).
LOSS_NAMES = {
    "entropy": "entropy of the predictions", "diversity": "class diversity (negated)",
    "ce": "cross-entropy on pseudo labels", "npl": "negative learning (unlikely classes)",
    "ce_easy": "cross-entropy, confident images", "npl_easy": "negative learning, confident images",
    "contrast": "prototype contrast", "ce_mix": "cross-entropy, mixed images",
    "npl_mix": "negative learning, mixed images", "kd": "distillation from the source",
    "nl": "negative learning", "pl": "cross-entropy on pseudo labels", "ms": "maximum squares",
    "rce": "reverse cross-entropy", "sl": "self-labelling", "pc": "prototype consistency",
    "kld": "KL divergence to confident labels", "ent": "entropy of uncertain pixels",
    "cst": "consistency with the teacher", "neg": "negative learning", "be": "confidence-weighted cross-entropy",
}


def loss_label(key: str) -> str:
    """``"npl"`` → ``"negative learning (unlikely classes) [npl]"``; unknown keys stay as they are."""
    return f"{LOSS_NAMES[key]} [{key}]" if key in LOSS_NAMES else key


def stage_runs(history: list[dict]) -> list[tuple[str, list[dict]]]:
    """The history cut into consecutive runs of one stage, in order: ``[(stage name, entries)]``."""
    runs: list[tuple[str, list[dict]]] = []
    for h in history:
        if not runs or runs[-1][0] != h["stage"]:
            runs.append((h["stage"], []))
        runs[-1][1].append(h)
    return runs


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start); NaNs are skipped."""
    out = np.full(len(values), np.nan)
    for i in range(len(values)):
        part = values[max(0, i - window + 1): i + 1]
        part = part[~np.isnan(part)]
        out[i] = part.mean() if len(part) else np.nan
    return out


def plot_losses(path: Path, history: list[dict], stage_titles: Optional[dict[str, str]] = None,
                miou: Optional[dict[str, tuple]] = None) -> None:
    """One panel per stage (each on its own scale), each loss named in words, over the stage's iterations.

    Args:
        history: ``{"stage", "iter", <loss>: value}`` per iteration, stages one after another.
        stage_titles: ``{stage: what it does}`` for the panel titles.
        miou: ``{stage: (mIoU before the stage, mIoU after)}`` shown in the titles when known.
    """
    runs = stage_runs(history)
    if not runs:
        return
    plt = pyplot()
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.8 * len(runs)), squeeze=False)
    for ax, (stage, entries) in zip(axes[:, 0], runs):
        x = np.array([h["iter"] for h in entries])
        window = max(1, len(entries) // 20)
        for key in sorted({k for h in entries for k in h if k not in ("stage", "iter")}):
            y = np.array([h.get(key, np.nan) for h in entries], dtype=float)
            line, = ax.plot(x, y, linewidth=0.6, alpha=0.35 if window > 1 else 1.0)
            if window > 1:
                ax.plot(x, running_mean(y, window), color=line.get_color(), linewidth=1.4, label=loss_label(key))
            else:
                line.set_label(loss_label(key))
        title = f"stage {stage}" + (f": {stage_titles[stage]}" if stage_titles and stage_titles.get(stage) else "")
        if miou and stage in miou and None not in miou[stage]:
            title += f"  (mIoU {miou[stage][0]:.1f} → {miou[stage][1]:.1f})"
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration within the stage" + (" (bold: running mean)" if len(history) > 40 else ""))
    fig.tight_layout()
    save_figure(fig, path)


def plot_iou_chart(path: Path, before: dict, after: dict, title: str = "",
                   absent: Sequence[str] = ()) -> None:
    """Grouped bars of per-class IoU before and after adaptation (``absent``: classes not in the labels)."""
    plot_iou_bars(path, {"before": before, "after": after}, list(after["iou"]), title=title, absent=absent)


PREVIEW_CAPTIONS = {"image": "target image", "pseudo": "pseudo label (trained on)", "pred": "student's prediction"}


def caption_strip(panels: list[np.ndarray], captions: list[str], title: str) -> np.ndarray:
    """Panels side by side under a white band: ``title`` on the left, each panel's caption above it."""
    import cv2

    strip = np.concatenate(panels, axis=1)
    width = panels[0].shape[1]
    scale = max(0.35, min(0.5, width / 400))
    band = np.full((int(40 * scale / 0.35), strip.shape[1], 3), 255, np.uint8)
    line = band.shape[0] // 2 - 2
    cv2.putText(band, title, (4, line), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    for k, caption in enumerate(captions):
        cv2.putText(band, caption, (k * width + 4, band.shape[0] - 5), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (60, 60, 60), 1, cv2.LINE_AA)
    return np.concatenate([band, strip], axis=0)


def save_preview(path: Path, previews: dict, meta, title: str = "") -> None:
    """First image of the batch: image | pseudo label | prediction, palette-coloured and captioned, as one PNG."""
    import cv2

    lut = meta.classes.palette_array()
    image = previews["image"][0].detach().float().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
    keys = ["image"] + [k for k in ("pseudo", "pred") if k in previews]
    panels = [image] + [lut[previews[k][0].detach().cpu().numpy().astype(np.int64).clip(0, 255)] for k in keys[1:]]
    strip = caption_strip(panels, [PREVIEW_CAPTIONS[k] for k in keys], title)
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
    iterations; the source's values as dashed lines, the AdaBN baseline's dotted, the shipped point starred."""
    points = record["points"]
    if not points:
        return
    plt = pyplot()
    crit, x = record["criterion"], selection_axis(points)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(x, [p["scores"][crit] for p in points], "o-", color="C0", label=f"{crit} (label-free)")
    ax.set_xlabel("iteration (all stages)")
    ax.set_ylabel(crit, color="C0")
    ref, base = record.get("reference"), record.get("baseline")
    if ref:
        ax.axhline(ref["scores"][crit], color="C0", linestyle="--", linewidth=0.8, label=f"source {crit}")
    if base:
        ax.axhline(base["scores"][crit], color="C0", linestyle=":", linewidth=0.8, label=f"AdaBN {crit}")
    shipped = record["shipped"]
    if shipped.get("stage") is not None and not shipped.get("reference") and not shipped.get("baseline"):
        i = next(k for k, p in enumerate(points) if (p["stage"], p["iter"]) == (shipped["stage"], shipped["iter"]))
        ax.plot([x[i]], [points[i]["scores"][crit]], "*", color="C3", markersize=14, label="shipped")
    if any(p.get("miou") is not None for p in points):
        ax2 = ax.twinx()
        ax2.plot(x, [p.get("miou") if p.get("miou") is not None else np.nan for p in points], "s-", color="C1",
                 label="mIoU (labels)")
        if ref and ref.get("miou") is not None:
            ax2.axhline(ref["miou"], color="C1", linestyle="--", linewidth=0.8)
        if base and base.get("miou") is not None:
            ax2.axhline(base["miou"], color="C1", linestyle=":", linewidth=0.8)
        ax2.set_ylabel("mIoU %", color="C1")
        ax2.legend(loc="lower right", fontsize=7)
    title = "shipped: " + ("source (fallback)" if shipped.get("reference") else
                           "AdaBN baseline (fallback)" if shipped.get("baseline") else str(shipped.get("stage")))
    ax.set_title(title + (f" — {record['reason']}" if record.get("reason") else ""), fontsize=8)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
