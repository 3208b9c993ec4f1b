"""Continual test-time adaptation on a labelled synthetic drive: per condition and overall, round 1 vs
the last round, for the source model and an offline-adapted one, without and with each ``--adapt``.

    python -m scripts.drive_benchmark --drive runs/bench/drive --size 128 256 --rounds 3 \\
        --condition-frames 50 --atp-iters 200 [--adapted runs/adapt/atp/model.safetensors]

The drive (``generate-data --drive``) is generated into ``--drive`` unless it is there already. The
offline-adapted model is ``--adapted``, or ATP (stages A,T,P) on the ``real`` style of the synthetic
benchmark for ``--atp-iters`` iterations per stage (0: no offline-adapted model). Every cell is one
``sfda-deploy segment DRIVE --labels ... [--adapt M]`` run (``run_segment``); the script PRINTS the
tables (mIoU per condition and overall, round 1 and last round, resets, fps, and the issue's checks:
gain over no adaptation, worst condition of the last round vs no adaptation, last vs first round,
fps ratio) and writes them to ``runs/drive-benchmark/<name>/{results.json,table.md}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sfda_deploy.commands.segment import run_segment
from sfda_deploy.config import AdaptConfig, SegmentConfig
from sfda_deploy.data.synth_drive import DrivePlan, generate_drive, parse_conditions
from sfda_deploy.errors import SfdaError
from sfda_deploy.runs import new_run_dir, write_json, write_text

BUNDLED = Path(__file__).resolve().parents[1] / "sfda_deploy" / "assets" / "source_mobilenetv2_aspp.safetensors"


def ensure_drive(args) -> Path:
    out = Path(args.drive)
    if (out / "drive.json").is_file():
        print(f"reusing the drive in {out}")
        return out
    plan = DrivePlan(parse_conditions(args.conditions), args.rounds, args.condition_frames, args.scene_frames,
                     tuple(args.size), args.seed)
    return generate_drive(out, plan)


def offline_adapted(args) -> Path | None:
    """``--adapted``, or ATP on the synthetic ``real`` style (None with ``--atp-iters 0``)."""
    if args.adapted:
        return Path(args.adapted)
    if args.atp_iters <= 0:
        return None
    from sfda_deploy.adapt.methods.atp import NO_EGO_BAND
    from sfda_deploy.commands.adapt import run_adapt
    from sfda_deploy.data.synthetic import generate

    root = generate(Path(args.drive).with_name(Path(args.drive).name + "-real"), ["real"],
                    {"train": args.atp_train, "val": 20}, tuple(args.size), args.seed)
    run = run_adapt(AdaptConfig(target="cityscapes", data_root=str(root / "real"), source=args.source, method="atp",
                                stages="A,T,P", iters=args.atp_iters, batch=2, crop=(128, 128), device=args.device,
                                workers=0, seed=args.seed, name=f"{args.name}-atp-real",
                                options={**NO_EGO_BAND, "preview_every": 0}))
    return run / "model.safetensors"


def run_cell(args, drive: Path, model: Path, method: str | None, tag: str) -> dict:
    cfg = SegmentConfig(source=str(drive / "drive.mp4"), model=str(model), device=args.device,
                        threads=args.threads, save_video=False, labels=str(drive / "labels"), adapt=method,
                        adapt_every=args.adapt_every, name=f"{args.name}-{tag}-{method or 'none'}")
    s = json.loads((run_segment(cfg) / "summary.json").read_text())
    rounds = sorted(s["scores"]["per_round"], key=int)
    a = s.get("adaptation", {})
    return {"model": tag, "method": method or "none", "miou": s["scores"]["overall"]["miou"],
            "per_condition": s["scores"]["per_condition"], "round_first": s["scores"]["per_round"][rounds[0]],
            "round_last": s["scores"]["per_round"][rounds[-1]], "last_round": rounds[-1],
            "per_round_condition": s["scores"]["per_round_condition"], "updates": a.get("updates", 0),
            "resets": a.get("resets", 0), "fps": s["fps_end_to_end"]}


def checks(row: dict, base: dict, conditions) -> dict:
    """The issue's targets for one adapted row against the same model without adaptation."""
    last = row["last_round"]
    worst = min(row["per_round_condition"][f"{last}/{c}"] - base["per_round_condition"][f"{last}/{c}"]
                for c in conditions)
    return {"gain": round(row["miou"] - base["miou"], 2), "worst_condition_last_round": round(worst, 2),
            "last_minus_first": round(row["round_last"] - row["round_first"], 2),
            "fps_ratio": round(row["fps"] / base["fps"], 3) if base["fps"] else 0.0}


def table(rows: list[dict], conditions) -> str:
    head = ["model", "--adapt", *conditions, "overall", "round 1", "last round", "resets", "fps",
            "gain", "worst cond. (last rd)", "last − first", "fps ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = r.get("checks", {})
        cells = [r["model"], r["method"], *(f"{r['per_condition'][k]:.1f}" for k in conditions), f"{r['miou']:.1f}",
                 f"{r['round_first']:.1f}", f"{r['round_last']:.1f}", str(r["resets"]), f"{r['fps']:.1f}",
                 *(f"{c[k]:+.2f}" if c else "–" for k in ("gain", "worst_condition_last_round", "last_minus_first")),
                 f"{c['fps_ratio']:.2f}" if c else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--drive", default="runs/bench/drive", help="drive folder (generated if missing)")
    p.add_argument("--conditions", default="real,rain,fog,night,real")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--condition-frames", type=int, default=50)
    p.add_argument("--scene-frames", type=int, default=40)
    p.add_argument("--size", type=int, nargs=2, default=(128, 256))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default=str(BUNDLED), help="the source checkpoint")
    p.add_argument("--adapted", help="an offline-adapted checkpoint (default: ATP on 'real', --atp-iters)")
    p.add_argument("--atp-iters", type=int, default=200, help="ATP iterations per stage (0: no offline row)")
    p.add_argument("--atp-train", type=int, default=120, help="unlabelled 'real' images ATP adapts on")
    p.add_argument("--methods", default="bnstats,tent,cotta,anchored")
    p.add_argument("--adapt-every", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="drive")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        drive = ensure_drive(args)
        conditions = list(dict.fromkeys(json.loads((drive / "drive.json").read_text())["conditions"]))
        models = {"source": Path(args.source)}
        adapted = offline_adapted(args)
        if adapted is not None:
            models["offline"] = adapted
        rows = []
        for tag, model in models.items():
            base = run_cell(args, drive, model, None, tag)
            rows.append(base)
            for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
                row = run_cell(args, drive, model, method, tag)
                row["checks"] = checks(row, base, conditions)
                rows.append(row)
    except SfdaError as e:
        sys.exit(f"error: {e}")
    text = table(rows, conditions)
    out = new_run_dir("drive-benchmark", args.name)
    write_json(out / "results.json", {"args": vars(args), "models": {k: str(v) for k, v in models.items()}, "rows": rows})
    write_text(out / "table.md", text + "\n")
    print(text)
    print(f"\n(written to {out})")


if __name__ == "__main__":
    main()
