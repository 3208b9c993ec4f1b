"""What can self-training reach from the source model? Per style: the classes the source model (almost)
never predicts correctly, and the share of the source → oracle gap a method would close if every OTHER
class reached its oracle IoU (a ceiling for methods that learn from the model's own arg-max). With
``--source``, also how often the source model's confident pixels are wrong (ATP stage A sharpens them).

    python -m scripts.reach_ceiling --oracle-json runs/source-oracle/<name>/results.json \\
        [--recall 0.05] [--source sfda_deploy/assets/source_mobilenetv2_aspp.safetensors --data data/synth]

``--oracle-json`` is what ``scripts/source_oracle.py`` writes (source-only and oracle confusion matrices).
"""
from __future__ import annotations

import argparse
import json
import sys
from itertools import islice
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sfda_deploy.metrics import confidence_errors, prediction_share, reachable_gap_share, recall_per_class


def iou_vector(result: dict) -> torch.Tensor:
    return torch.tensor([float("nan") if v is None else v for v in result["iou"].values()], dtype=torch.float64)


def reach_rows(results: dict, recall_bar: float, bars) -> tuple[list[str], list[str]]:
    """Markdown rows: one summary line per style (the ceiling at each of ``bars``), and one per-class line
    (recall / predicted share, %)."""
    names = list(next(iter(results["oracle"].values()))["iou"])
    summary, per_class = [], {n: [] for n in names}
    for style, oracle in results["oracle"].items():
        source = results["source_only"][style]
        cm = torch.tensor(source["confusion"])
        recall, share = recall_per_class(cm), prediction_share(cm)
        src, orc = iou_vector(source), iou_vector(oracle)
        learnt = ~(torch.isnan(src) | torch.isnan(orc)) & (orc >= 1.0)  # classes the oracle gets at all (IoU %)
        unreachable = learnt & ~(recall >= recall_bar)
        ceilings = [f"{100 * reachable_gap_share(src, orc, recall >= bar):.1f} %" for bar in bars]
        lost = [f"{n} ({100 * float(recall[i]):.1f} %)" for i, n in enumerate(names) if unreachable[i]]
        summary.append(f"| {style} | {source['miou']:.2f} | {oracle['miou']:.2f} | {', '.join(lost) or '–'} "
                       f"| {' | '.join(ceilings)} |")
        for i, n in enumerate(names):
            per_class[n].append("–" if torch.isnan(recall[i]) else f"{100 * float(recall[i]):.1f} / "
                                f"{100 * float(share[i]):.1f}")
    head = "| class | " + " | ".join(f"{s} recall / predicted %" for s in results["oracle"]) + " |"
    rows = [head, "|---|" + "---:|" * len(results["oracle"])]
    rows += [f"| {n} | " + " | ".join(cells) + " |" for n, cells in per_class.items()]
    return summary, rows


def confidence_rows(source: Path, data: Path, styles, images: int, threshold: float) -> list[str]:
    """One row per style: share of labelled pixels with normalized entropy < threshold, how often wrong."""
    from sfda_deploy import load_model
    from sfda_deploy.adapt.losses.entropy import normalized_entropy
    from sfda_deploy.data import build_dataset

    model, meta = load_model(source)
    model.eval()
    rows = []
    for style in styles:
        dataset = build_dataset("cityscapes", data / style, "val", class_set=meta.class_set)
        confident, correct = [], []
        with torch.no_grad():
            for batch in islice(DataLoader(dataset, batch_size=1), images):
                logits = model(meta.normalize(batch["image"]))
                logits = torch.nn.functional.interpolate(logits, size=batch["label"].shape[-2:], mode="bilinear",
                                                         align_corners=meta.align_corners)
                keep = batch["label"] < meta.num_classes
                confident.append((normalized_entropy(logits) < threshold)[keep])
                correct.append((logits.argmax(1) == batch["label"])[keep])
        out = confidence_errors(torch.cat(confident), torch.cat(correct))
        rows.append(f"| {style} | {100 * out['confident']:.1f} % | {100 * out['confident_wrong']:.1f} % "
                    f"| {100 * (1 - out['confident']):.1f} % | {100 * out['unsure_wrong']:.1f} % |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--oracle-json", type=Path, required=True, help="results.json of scripts/source_oracle.py")
    p.add_argument("--recall", type=float, default=0.05,
                   help="a class the source model recalls less often than this counts as unreachable")
    p.add_argument("--bars", type=float, nargs="+", default=[0.01, 0.05, 0.10],
                   help="recall bars the ceiling is printed at (how sensitive it is to the bar)")
    p.add_argument("--source", type=Path, help="source checkpoint: adds the confident-error table")
    p.add_argument("--data", type=Path, default=Path("data/synth"))
    p.add_argument("--images", type=int, default=50, help="val images per style for the confident-error table")
    p.add_argument("--entropy", type=float, default=1 / 6,
                   help="'confident' = normalized entropy below this (1/(γ+1): where ATP's stage A lowers it)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    results = json.loads(args.oracle_json.read_text())
    summary, per_class = reach_rows(results, args.recall, args.bars)
    print(f"Classes the oracle learns that the source model recalls on < {100 * args.recall:g} % of their pixels; "
          "ceiling = share of the source → oracle gap closed if every class recalled at least at the bar "
          "reached its oracle IoU and the others stayed:\n")
    print(f"| style | source-only | oracle | unreachable at {100 * args.recall:g} % (source recall) | "
          + " | ".join(f"ceiling, bar {100 * b:g} %" for b in args.bars) + " |")
    print("|---|---:|---:|---|" + "---:|" * len(args.bars))
    print("\n".join(summary) + "\n")
    print("\n".join(per_class) + "\n")
    if args.source:
        print(f"Source model's confident pixels (normalized entropy < {args.entropy:.3f}), {args.images} val images:\n")
        print("| style | confident | of those, wrong | unsure | of those, wrong |\n|---|---:|---:|---:|---:|")
        styles = ["source", *results["oracle"]]
        print("\n".join(confidence_rows(args.source, args.data, styles, args.images, args.entropy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
