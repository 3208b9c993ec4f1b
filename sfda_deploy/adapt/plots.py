"""Run artefacts: loss curves, before/after per-class IoU chart, pseudo-label previews, the selection curves and
compare's chart (I/O only)."""
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


def loss_scale(values: np.ndarray) -> float:
    """The power of ten a panel's losses are shown in units of: 1 unless the largest magnitude is under 0.01
    (weighted terms such as ATP's stage A, ~1e-5), then ``10**floor(log10(max |v|))`` so the axis reads in
    plain numbers and says the unit in its label."""
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    return 1.0 if top == 0.0 or top >= 0.01 else float(10.0 ** np.floor(np.log10(top)))


def plot_losses(path: Path, history: list[dict], stage_titles: Optional[dict[str, str]] = None,
                miou: Optional[dict[str, tuple]] = None) -> None:
    """One panel per stage (each on its own scale), each loss named in words, over the stage's iterations.

    Args:
        history: ``{"stage", "iter", <loss>: value}`` per iteration, stages one after another.
        stage_titles: ``{stage: what it does}`` for the panel titles.
        miou: ``{stage: (mIoU before the stage, mIoU after)}`` shown in the titles when known.
    """
    from matplotlib.ticker import MaxNLocator

    runs = stage_runs(history)
    if not runs:
        return
    plt = pyplot()
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 2.8 * len(runs)), squeeze=False)
    for ax, (stage, entries) in zip(axes[:, 0], runs):
        x = np.array([h["iter"] for h in entries])
        window = max(1, len(entries) // 20)
        keys = sorted({k for h in entries for k in h if k not in ("stage", "iter")})
        series = {loss_label(k): np.array([h.get(k, np.nan) for h in entries], dtype=float) for k in keys}
        if len(keys) > 1:  # what the stage minimises: the weighted terms' sum
            series["total (minimised)"] = np.nansum(np.stack(list(series.values())), axis=0)
        scale = loss_scale(np.concatenate(list(series.values())))
        for label, y in series.items():
            y = y / scale
            total = label.startswith("total")
            line, = ax.plot(x, y, linewidth=0.6, alpha=0.35 if window > 1 else 1.0, color="black" if total else None)
            if window > 1:
                ax.plot(x, running_mean(y, window), color=line.get_color(), linewidth=1.4, label=label)
            else:
                line.set_label(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        title = f"stage {stage}" + (f": {stage_titles[stage]}" if stage_titles and stage_titles.get(stage) else "")
        if miou and stage in miou and None not in miou[stage]:
            title += f"  (mIoU {miou[stage][0]:.1f} → {miou[stage][1]:.1f})"
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel("loss" if scale == 1 else f"loss (×{scale:.0e})")
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("iteration within the stage" + (" (bold: running mean)" if len(history) > 40 else ""))
    fig.tight_layout()
    save_figure(fig, path)


def plot_iou_chart(path: Path, before: dict, after: dict, title: str = "",
                   absent: Sequence[str] = (), after_label: str = "after") -> None:
    """Grouped bars of per-class IoU before and after adaptation (``absent``: classes not in the labels;
    ``after_label``: what the "after" model is, e.g. the AdaBN baseline a fallback shipped)."""
    plot_iou_bars(path, {"before: the source": before, after_label: after}, list(after["iou"]), title=title,
                  absent=absent)


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


CRITERION_NAMES = {"im": "information maximisation, nats", "snd": "soft neighbourhood density",
                   "mix": "mix agreement"}
REJECTED_MARKERS = {"collapse": "X", "below floor": "v", "after a floor breach": "1"}


def plot_selection(path: Path, record: dict) -> None:
    """The selection criterion (left axis) and, where labels exist, mIoU (right axis) over the run's
    iterations; the source's values dashed, the AdaBN baseline's dotted, the shipped point starred, the
    points the rule could not ship marked with why (``shipped.point_rejections``); one legend for every line."""
    import textwrap

    from matplotlib.ticker import MaxNLocator

    from sfda_deploy.adapt.selection.criteria import anchor_of, value
    from sfda_deploy.adapt.shipped import point_rejections, shipped_words

    points = record["points"]
    if not points:
        return
    plt = pyplot()
    crit, x = record["select_by"], selection_axis(points)
    ref, base = record.get("reference"), record.get("baseline")

    def score(p: dict) -> float:  # a composite's mean gain over AdaBN's scores (criteria.anchor_of)
        return value(p, crit, anchor_of(base, ref, points))

    fig, ax = plt.subplots(figsize=(9, 5))
    ax.plot(x, [score(p) for p in points], "o-", color="C0", label=f"{crit} of each checkpoint (label-free)")
    ax.set_xlabel("iteration (all stages, one after another)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{crit}: {CRITERION_NAMES.get(crit, 'mean relative gain over AdaBN')} (higher = better)", color="C0")
    if ref:
        ax.axhline(score(ref), color="C0", linestyle="--", linewidth=0.8, label=f"source {crit}")
    if base:
        ax.axhline(score(base), color="C0", linestyle=":", linewidth=0.8, label=f"AdaBN {crit}")
    for why, marker in REJECTED_MARKERS.items():
        hit = [k for k, r in enumerate(point_rejections(record)) if r == why]
        if hit:
            ax.plot([x[k] for k in hit], [score(points[k]) for k in hit], marker, color="C3", markersize=9,
                    linestyle="none", label=f"not shippable: {why}")
    shipped = record["shipped"]
    if shipped.get("stage") is not None and not shipped.get("reference") and not shipped.get("baseline"):
        i = next(k for k, p in enumerate(points) if (p["stage"], p["iter"]) == (shipped["stage"], shipped["iter"]))
        ax.plot([x[i]], [score(points[i])], "*", color="C2", markersize=15, linestyle="none",
                label="shipped")
    handles, labels = ax.get_legend_handles_labels()
    if any(p.get("miou") is not None for p in points):
        ax2 = ax.twinx()
        ax2.plot(x, [p.get("miou") if p.get("miou") is not None else np.nan for p in points], "s-", color="C1",
                 label="mIoU of each checkpoint (labels, not used to choose)")
        if ref and ref.get("miou") is not None:
            ax2.axhline(ref["miou"], color="C1", linestyle="--", linewidth=0.8, label="source mIoU")
        if base and base.get("miou") is not None:
            ax2.axhline(base["miou"], color="C1", linestyle=":", linewidth=0.8, label="AdaBN mIoU")
        ax2.set_ylabel("mIoU %", color="C1")
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.14), ncol=2, frameon=False)
    title = f"shipped: {shipped_words(record)}"
    if record.get("reason"):
        title += f" — {record['reason']}"
    ax.set_title(textwrap.fill(title, 110), fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


FALLBACK_HATCH = "//"


def plot_compare(path: Path, rows: dict, source: Optional[dict], title: str = "") -> None:
    """Shipped mIoU per method (top; a method that shipped a fallback hatched, named on its bar) and per-class
    IoU per method (bottom)."""
    from matplotlib.patches import Patch

    plt = pyplot()
    series = ({"source-only": source} if source else {}) | rows
    names = list(series)
    classes = list(next(iter(rows.values()))["iou"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.6 * len(classes)), 8))
    fallback = [bool(series[n].get("fallback")) for n in names]
    bars = ax1.bar(names, [series[n]["miou"] for n in names], color="C0",
                   hatch=[FALLBACK_HATCH if f else "" for f in fallback], edgecolor="white")
    ax1.bar_label(bars, labels=[f"{series[n]['miou']:.1f}" + (f"\n= {series[n]['selected']}" if f else "")
                                for n, f in zip(names, fallback)], fontsize=8)
    ax1.set_ylabel("mIoU % of the shipped model")
    ax1.set_ylim(0, max(series[n]["miou"] for n in names) * 1.25 + 1)
    if any(fallback):
        ax1.legend(handles=[Patch(facecolor="C0", hatch=FALLBACK_HATCH, edgecolor="white",
                                  label="fallback: the run's own checkpoints did not beat the AdaBN baseline "
                                        "(or the source), which shipped")], fontsize=7, loc="upper left")
    if title:
        ax1.set_title(title, fontsize=9)
    width = 0.8 / len(names)
    x = np.arange(len(classes))
    for i, n in enumerate(names):
        ax2.bar(x + (i - (len(names) - 1) / 2) * width, [series[n]["iou"].get(c) or 0.0 for c in classes],
                width, label=n + (" (fallback)" if fallback[i] else ""), hatch=FALLBACK_HATCH if fallback[i] else "")
    ax2.set_xticks(x, classes, rotation=60, ha="right", fontsize=7)
    ax2.set_ylabel("IoU % per class")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
