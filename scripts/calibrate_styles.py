"""Calibrate synthetic target styles on training-free numbers only: source-only, AdaBN and the oracle.

    OMP_NUM_THREADS=1 python -m scripts.calibrate_styles --styles city2,suburb --data data/cal
    ... --oracle-iters 3000     # also train each style's oracle (the bundled source recipe), minutes each

For each style: the bundled source model's mIoU on the val split (source-only), the same model with its
BatchNorm statistics re-estimated on the style's train images (AdaBN, as ``--method adabn`` ships it) and,
with ``--oracle-iters``, a model of the source recipe trained on the style's labelled train split. Prints
source-only ÷ oracle, AdaBN's share of the gap and the classes the oracle gets to 20 IoU, against the targets
of benchmark v3 (ratio 0.45–0.65, AdaBN 10–40 % of the gap, ≥ 15 classes at ≥ 20 IoU). No adaptation method
is run: a calibration looks at nothing a method produces. ``--out`` writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TARGETS = {"ratio": (0.45, 0.65), "adabn_share": (0.10, 0.40), "classes_at_20": 15}


def gap_share(value: float, source_only: float, oracle: float) -> float:
    """Share of the source-to-oracle gap that ``value`` closes (``(value − source) / (oracle − source)``)."""
    return (value - source_only) / (oracle - source_only) if oracle != source_only else float("nan")


def verdict(source_only: float, adabn: float, oracle: float | None, oracle_iou: dict | None) -> dict:
    """The calibration figures of one style and whether each meets its target."""
    out = {"source_only": source_only, "adabn": adabn}
    if oracle is None:
        return out
    ratio, share = source_only / oracle, gap_share(adabn, source_only, oracle)
    classes = sum(v is not None and v >= 20 for v in oracle_iou.values())  # None: a class absent from val
    lo, hi = TARGETS["ratio"]
    slo, shi = TARGETS["adabn_share"]
    out.update(oracle=oracle, ratio=round(ratio, 3), adabn_share=round(share, 3), classes_at_20=classes,
               meets={"ratio": lo <= ratio <= hi, "adabn_share": slo <= share <= shi,
                      "classes": classes >= TARGETS["classes_at_20"]})
    return out


def _loader(data: Path, style: str, split: str, class_set: str):
    from torch.utils.data import DataLoader

    from sfda_deploy.data import build_dataset

    return DataLoader(build_dataset("cityscapes", data / style, split, class_set=class_set), batch_size=4)


def measure(data: Path, style: str, oracle_iters: int, seed: int) -> dict:
    import torch

    from scripts.rebase_benchmark import SOURCE_RECIPE  # the oracles' recipe is the re-base's
    from sfda_deploy import load_model
    from sfda_deploy.adapt.methods.adabn import adabn_copy
    from sfda_deploy.assets import BUNDLED_MODEL
    from sfda_deploy.data import build_dataset
    from sfda_deploy.evaluate import evaluate_model

    torch.set_num_threads(1)
    model, meta = load_model(BUNDLED_MODEL)
    val = _loader(data, style, "val", meta.class_set)
    t0 = time.perf_counter()
    source_only = evaluate_model(model, meta, val, progress=False)
    train = build_dataset("cityscapes", data / style, "train", class_set=meta.class_set)
    adabn = evaluate_model(adabn_copy(model, train, meta, "cpu", show_progress=False), meta, val, progress=False)
    oracle = None
    if oracle_iters:
        from sfda_deploy.commands.adapt import run_train_source
        from sfda_deploy.config import TrainSourceConfig

        cfg = TrainSourceConfig(target="cityscapes", data_root=str(data / style), eval_every=0, workers=0,
                                seed=seed, name=f"calibrate-oracle-{style}", **{**SOURCE_RECIPE, "iters": oracle_iters})
        oracle_model, oracle_meta = load_model(run_train_source(cfg) / "model.safetensors")
        oracle = evaluate_model(oracle_model, oracle_meta, val, progress=False)
    out = verdict(source_only["miou"], adabn["miou"], oracle["miou"] if oracle else None,
                  oracle["iou"] if oracle else None)
    out.update(style=style, source_only_iou=source_only["iou"], adabn_iou=adabn["iou"],
               oracle_iou=oracle["iou"] if oracle else None, oracle_iters=oracle_iters,
               wall_s=round(time.perf_counter() - t0, 1))
    return out


def main(argv=None) -> int:
    from concurrent.futures import ProcessPoolExecutor

    from sfda_deploy.data.synthetic import generate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--styles", required=True, help="comma-separated style names")
    p.add_argument("--data", type=Path, required=True, help="folder for the generated styles (reused when it "
                   "holds the same settings)")
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--size", type=int, nargs=2, default=(128, 256))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="measure only these of --styles (the data holds all of them)")
    p.add_argument("--oracle-iters", type=int, default=0, help="train an oracle per style (0: skip)")
    p.add_argument("--workers", type=int, default=1, help="styles measured side by side (one thread each)")
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    p.add_argument("--state", type=Path, help="also save each oracle as the re-base's step oracle@<style> in this "
                   "folder (scripts/rebase_benchmark.py's --state; same recipe, so the re-base does not train it "
                   "again): only with the re-base's data settings (--train 400 --val 100 --size 128 256)")
    args = p.parse_args(argv)
    styles = [s for s in args.styles.split(",") if s]
    generate(args.data, styles, {"train": args.train, "val": args.val}, args.size, seed=args.seed)
    styles = [s for s in args.only.split(",") if s] if args.only else styles
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(measure, [args.data] * len(styles), styles, [args.oracle_iters] * len(styles),
                             [args.seed] * len(styles)))
    print("| style | source-only | AdaBN | oracle | ratio | AdaBN share | classes ≥ 20 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['style']} | {r['source_only']:.1f} | {r['adabn']:.1f} | {r.get('oracle', float('nan')):.1f} | "
              f"{r.get('ratio', float('nan')):.2f} | {r.get('adabn_share', float('nan')):.0%} | "
              f"{r.get('classes_at_20', '-')} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    if args.state and args.oracle_iters:
        from sfda_deploy.runs import write_json

        for r in rows:
            write_json(args.state / f"oracle@{r['style']}.json", {"miou": r["oracle"], "iou": r["oracle_iou"],
                                                                   "wall_s": r["wall_s"], "iters": r["oracle_iters"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
