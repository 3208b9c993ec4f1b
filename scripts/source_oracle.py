"""Source-only vs oracle mIoU on the synthetic benchmark: how large is the domain shift per style?

Trains (or takes) the source model on the ``source`` style, trains one oracle per target style on that
style's labelled train split with the same net and budget, evaluates each on the val splits, and
PRINTS the table (also written to ``runs/source-oracle/<name>/{results.json,table.md}``).

    python -m scripts.source_oracle --data data/synth --iters 500 \\
        [--source sfda_deploy/assets/source_mobilenetv2_aspp.safetensors]

``--data`` is generated first (``generate`` with --train/--val/--size/--seed) unless it holds it already.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sfda_deploy import load_model
from sfda_deploy.commands.adapt import run_train_source
from sfda_deploy.config import TrainSourceConfig
from sfda_deploy.data import build_dataset
from sfda_deploy.data.synthetic import STYLES, generate
from sfda_deploy.evaluate import evaluate_model
from sfda_deploy.metrics import format_table
from sfda_deploy.runs import new_run_dir, write_json, write_text

TARGETS = tuple(s for s in STYLES if s != "source")


def train(args, style: str) -> Path:
    cfg = TrainSourceConfig(target="cityscapes", data_root=str(args.data / style), arch=args.arch,
                            iters=args.iters, batch=args.batch, crop=tuple(args.crop), lr=args.lr,
                            eval_every=0, workers=0, seed=args.seed, name=f"{args.name}-{style}")
    return run_train_source(cfg) / "model.safetensors"


def evaluate(ckpt: Path, data: Path, styles) -> dict[str, dict]:
    model, meta = load_model(ckpt)
    out = {}
    for style in styles:
        loader = DataLoader(build_dataset("cityscapes", data / style, "val", class_set=meta.class_set), batch_size=1)
        out[style] = evaluate_model(model, meta, loader, desc=f"{ckpt.parent.name} on {style}")
    return out


def summary(source_only: dict[str, dict], oracle: dict[str, dict]) -> str:
    """Markdown table: per style, source-only mIoU, share of the source-val mIoU lost, oracle, gap."""
    ref = source_only["source"]["miou"]
    lines = ["| val split | source-only mIoU | lost vs source val | oracle mIoU | oracle − source-only |",
             "|---|---:|---:|---:|---:|",
             f"| source | {ref:.1f} | – | – | – |"]
    for style in TARGETS:
        s, o = source_only[style]["miou"], oracle[style]["miou"]
        lines.append(f"| {style} | {s:.1f} | {100 * (ref - s) / max(ref, 1e-9):.0f}% | {o:.1f} | {o - s:+.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data/synth"))
    p.add_argument("--source", type=Path, help="source checkpoint (default: train one with the same budget)")
    p.add_argument("--arch", default="mobilenetv2_aspp")
    p.add_argument("--train", type=int, default=400)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--size", type=int, nargs=2, default=(128, 256))
    p.add_argument("--crop", type=int, nargs=2, default=(128, 128))
    p.add_argument("--iters", type=int, default=500)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="source-oracle")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    generate(args.data, STYLES, {"train": args.train, "val": args.val}, args.size, seed=args.seed)
    run_dir = new_run_dir("source-oracle", args.name)
    oracle = {}
    for style in TARGETS:
        oracle[style] = evaluate(train(args, style), args.data, [style])[style]
        print(f"oracle {style}: {oracle[style]['miou']:.1f} mIoU", flush=True)
    source = args.source or train(args, "source")
    source_only = evaluate(source, args.data, STYLES)

    names = load_model(source)[1].classes.names
    per_class = format_table({**{f"src {s}": r for s, r in source_only.items()},
                              **{f"orc {s}": r for s, r in oracle.items()}}, names)
    table = summary(source_only, oracle)
    header = (f"{args.arch}, {args.iters} iters × batch {args.batch} of {args.crop[0]}x{args.crop[1]} crops, "
              f"images {args.size[0]}x{args.size[1]}, "
              f"{args.train} train / {args.val} val per style, seed {args.seed}; source model: {source}")
    print(f"\n{header}\n\n{table}\n\n{per_class}\n")
    write_json(run_dir / "results.json", {"settings": vars(args) | {"data": str(args.data), "source": str(source)},
                                          "source_only": source_only, "oracle": oracle})
    write_text(run_dir / "table.md", f"{header}\n\n{table}\n\n```\n{per_class}\n```\n")
    print(f"wrote {run_dir / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
