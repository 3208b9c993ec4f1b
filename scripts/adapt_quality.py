"""Print ATP's quality on the built-in synthetic shift: per target style, mIoU of the source model,
after stages A, T, P, and of a supervised oracle, and the share of the source→oracle gap closed.

    python -m scripts.adapt_quality --iters 200 --styles fog,night

Per style: the source checkpoint (default: the bundled ``sfda_deploy/assets/source_mobilenetv2_aspp
.safetensors``) is adapted with ``sfda-deploy adapt --method atp --stages A,T,P`` on the style's
unlabelled train split and evaluated on its val split after every stage (the run's metrics.json);
the oracle fine-tunes the same source on the style's **labelled** train split for ``--oracle-iters``
(``train-source --init``). gap closed = (after P − source) / (oracle − source).

Everything runs through the public API (``run_adapt``/``run_train_source``); runs land in
``runs/adapt/quality-<style>`` and ``runs/train-source/oracle-<style>``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sfda_deploy.adapt.methods.atp import NO_EGO_BAND
from sfda_deploy.commands.adapt import run_adapt, run_train_source
from sfda_deploy.config import AdaptConfig, TrainSourceConfig
from sfda_deploy.errors import SfdaError
from sfda_deploy.runs import runs_root

BUNDLED = Path(__file__).resolve().parents[1] / "sfda_deploy" / "assets" / "source_mobilenetv2_aspp.safetensors"


def _benchmark(root: Path, train: int, val: int, size, seed: int) -> Path:
    """The whole benchmark (every style, as ``generate-data`` and source_oracle.py make it), reused if there."""
    from sfda_deploy.data.synthetic import STYLES, generate

    return generate(root, STYLES, {"train": train, "val": val}, size, seed)


def _atp_options(iters: int) -> dict:
    # warm-up and the contrastive start scale with --iters (methods.base.scaled_schedule); the synthetic
    # camera has no ego-vehicle band, so no rows are zeroed
    return {**NO_EGO_BAND, "preview_every": max(iters // 2, 1)}


def evaluate_style(style: str, root: Path, source: str, args) -> dict:
    common = dict(target="cityscapes", data_root=str(root / style), device=args.device, workers=args.workers,
                  seed=args.seed)
    done = runs_root() / "adapt" / f"quality-{style}" / "metrics.json"
    if args.reuse and done.is_file() and "P" in json.loads(done.read_text()):
        run = done.parent
        print(f"{style}: reusing the finished ATP run {run}")
    else:
        run = run_adapt(AdaptConfig(**common, source=source, method="atp", stages="A,T,P", iters=args.iters,
                                    batch=args.batch, crop=tuple(args.crop), lr=args.lr, amp=True,
                                    name=f"quality-{style}", options=_atp_options(args.iters)))
    m = json.loads((run / "metrics.json").read_text())
    row = {"style": style, "source": m["before"]["miou"], **{s: m[s]["eval"]["miou"] for s in "ATP"}}
    if args.oracle_json:
        row["oracle"] = _oracle_from(args.oracle_json, style)
    else:
        row["oracle"] = _train_oracle(style, common, source, args)
    gap = row["oracle"] - row["source"]
    row["closed"] = 100 * (row["P"] - row["source"]) / gap if gap > 0 else float("nan")
    return row


def _oracle_from(path: str, style: str) -> float:
    """The oracle mIoU of ``style`` from ``scripts/source_oracle.py``'s results.json."""
    try:
        return json.loads(Path(path).read_text())["oracle"][style]["miou"]
    except (OSError, KeyError, ValueError) as e:
        raise SfdaError(f"--oracle-json {path} has no oracle mIoU for {style} ({e}): "
                        "pass the results.json of scripts/source_oracle.py on the same data") from None


def _train_oracle(style: str, common: dict, source: str, args) -> float:
    oracle = run_train_source(TrainSourceConfig(**common, init=source, iters=args.oracle_iters, batch=args.batch,
                                                crop=tuple(args.crop), lr=args.oracle_lr, eval_every=0,
                                                name=f"oracle-{style}"))
    return json.loads((oracle / "metrics.json").read_text())["S"]["eval"]["miou"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="runs/bench/synthetic", help="benchmark folder (generated if missing)")
    p.add_argument("--styles", default=None, help="comma-separated target styles (default: all but source)")
    p.add_argument("--source", default=str(BUNDLED), help="source checkpoint trained on the 'source' style")
    p.add_argument("--train", type=int, default=120)
    p.add_argument("--val", type=int, default=40)
    p.add_argument("--size", type=int, nargs=2, default=(128, 256))
    p.add_argument("--iters", type=int, default=200, help="ATP iterations per stage")
    p.add_argument("--oracle-iters", type=int, default=600)
    p.add_argument("--reuse", action="store_true", help="take a style's finished runs/adapt/quality-<style> "
                   "run instead of adapting again (e.g. to re-print the table with the oracle figures)")
    p.add_argument("--oracle-json", help="take the oracle mIoU from scripts/source_oracle.py's results.json "
                   "(same data) instead of fine-tuning one per style")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, nargs=2, default=(128, 128))
    p.add_argument("--lr", type=float, default=6e-5, help="ATP's AdamW lr (head ×10)")
    p.add_argument("--oracle-lr", type=float, default=1e-3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not Path(args.source).is_file():
        raise SystemExit(f"error: source checkpoint {args.source} not found: pass --source (a model trained on "
                         "the 'source' style with sfda-deploy train-source)")
    try:
        from sfda_deploy.data.synth_styles import STYLES
    except ImportError:
        raise SystemExit("error: sfda_deploy.data.synth_styles is not available in this checkout: merge main")
    styles = args.styles.split(",") if args.styles else [s for s in STYLES if s != "source"]
    try:
        root = _benchmark(Path(args.root), args.train, args.val, tuple(args.size), args.seed)
        rows = [evaluate_style(s, root, args.source, args) for s in styles]
    except SfdaError as e:
        raise SystemExit(f"error: {e}")
    oracle = f"oracle from {args.oracle_json}" if args.oracle_json else f"oracle {args.oracle_iters} it supervised"
    print(f"\nATP on the synthetic shift ({args.iters} it/stage, batch {args.batch}, crop {tuple(args.crop)}; "
          f"{oracle})")
    print(f"{'style':<12} {'source':>7} {'A':>7} {'T':>7} {'P':>7} {'oracle':>7} {'gap closed':>11}")
    for r in rows:
        worse = [s for s in "ATP" if r[s] < r["source"]]
        flag = f"  worse than source after {','.join(worse)}" if worse else ""
        print(f"{r['style']:<12} {r['source']:>7.2f} {r['A']:>7.2f} {r['T']:>7.2f} {r['P']:>7.2f} {r['oracle']:>7.2f} "
              f"{r['closed']:>10.1f}%{flag}")


if __name__ == "__main__":
    main()
