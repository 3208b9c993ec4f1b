"""Soak benchmark: does ``segment`` stay flat for hours? A labelled synthetic drive is looped for
``--minutes`` per mode (without adaptation, then with ``--adapt``), and every ``--window`` seconds the script
records the process's resident memory (RSS), the fps of the window and, with ``--labels``, its mIoU.

    OMP_NUM_THREADS=1 python -m scripts.soak --minutes 60 --window 60 --adapt anchored --labels

It PRINTS one table per mode and the targets: memory growth <= 5 % after the first ``--warmup-min``
minutes (the largest RSS of a later window against the RSS at the end of the warm-up); fps of the last
window >= 90 % of the first; with ``--adapt`` (drift reset on) the mIoU of the last full round of the drive
>= that of the first (a round: one pass through the drive's conditions; the drive is looped, so rounds
are counted across loops). The figures go to ``runs/soak/<name>/results.json``.

Frames come from ``data.sources`` and go through ``runtime.pipeline.stream_inference`` (reader thread,
online adapter) as in ``segment``; masks are scored, not written, so the disk is not what is measured.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch

from sfda_deploy.assets import BUNDLED_MODEL
from sfda_deploy.data.sources import open_source
from sfda_deploy.data.synth_drive import DrivePlan, generate_drive, parse_conditions
from sfda_deploy.metrics import ConfusionMatrix
from sfda_deploy.runs import new_run_dir, write_json, write_text

MEMORY_GROWTH_MAX = 0.05
FPS_RATIO_MIN = 0.90


# ------------------------------------------------------------------------------------ arithmetic
@dataclass
class Window:
    """One window of the soak: when it ended (s since the start), frames, seconds, RSS at its end, mIoU."""

    end_s: float
    frames: int
    seconds: float
    rss_mib: float
    miou: Optional[float] = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def memory_growth(windows: list[Window], warmup_s: float) -> Optional[float]:
    """Largest RSS of a window ending after the warm-up, relative to the RSS at the end of the warm-up
    (the first window ending at or after ``warmup_s``): 0.03 = 3 % growth. None without a later window."""
    after = [w for w in windows if w.end_s >= warmup_s]
    if len(after) < 2:
        return None
    base = after[0].rss_mib
    return max(w.rss_mib for w in after[1:]) / base - 1.0


def fps_ratio(windows: list[Window]) -> Optional[float]:
    """fps of the last window over the first (None with fewer than two windows)."""
    if len(windows) < 2 or windows[0].fps == 0:
        return None
    return windows[-1].fps / windows[0].fps


def round_mious(rounds: dict[int, "RoundScore"], frames_per_round: int) -> list[tuple[int, float]]:
    """``(round, mIoU)`` of every FULL round (all its frames scored), in order."""
    return [(k, r.miou()) for k, r in sorted(rounds.items()) if r.frames == frames_per_round]


def check_targets(windows: list[Window], warmup_s: float, full_rounds: list[tuple[int, float]],
                  adapt: bool) -> list[dict]:
    """The issue's targets: name, value, target, ok (None: not measurable in this run)."""
    growth, ratio = memory_growth(windows, warmup_s), fps_ratio(windows)
    checks = [
        {"target": f"memory growth after {warmup_s / 60:g} min <= {MEMORY_GROWTH_MAX:.0%}",
         "value": None if growth is None else round(100 * growth, 2),
         "ok": None if growth is None else growth <= MEMORY_GROWTH_MAX},
        {"target": f"fps last window >= {FPS_RATIO_MIN:.0%} of the first",
         "value": None if ratio is None else round(100 * ratio, 1),
         "ok": None if ratio is None else ratio >= FPS_RATIO_MIN},
    ]
    if adapt:
        ok = None if len(full_rounds) < 2 else full_rounds[-1][1] >= full_rounds[0][1]
        value = None if len(full_rounds) < 2 else [round(full_rounds[0][1], 2), round(full_rounds[-1][1], 2)]
        checks.append({"target": "mIoU last full round >= first", "value": value, "ok": ok})
    return checks


def rounds_line(full_rounds: list[tuple[int, float]], head: int = 8, tail: int = 4) -> str:
    """``1: 32.40, 2: 36.41, ...``; past ``head + tail`` rounds, the first ``head``, ``…``, the last ``tail`` and
    the range of all (an hour's soak has hundreds of rounds)."""
    def items(rounds):
        return ", ".join(f"{k}: {m:.2f}" for k, m in rounds)

    if len(full_rounds) <= head + tail:
        return items(full_rounds)
    values = [m for _, m in full_rounds]
    return (f"{items(full_rounds[:head])}, …, {items(full_rounds[-tail:])} "
            f"({len(full_rounds)} rounds, {min(values):.2f}-{max(values):.2f})")


def format_table(mode: str, windows: list[Window], full_rounds: list[tuple[int, float]], checks: list[dict]) -> str:
    lines = [f"## {mode}", "| window end (s) | frames | fps | RSS (MiB) | mIoU |", "| ---: | ---: | ---: | ---: | ---: |"]
    for w in windows:
        miou = "" if w.miou is None else f"{w.miou:.2f}"
        lines.append(f"| {w.end_s:.0f} | {w.frames} | {w.fps:.2f} | {w.rss_mib:.1f} | {miou} |")
    if full_rounds:
        lines.append("")
        lines.append("full rounds (mIoU): " + rounds_line(full_rounds))
    lines.append("")
    for c in checks:
        verdict = {True: "PASS", False: "FAIL", None: "n/a (run too short)"}[c["ok"]]
        lines.append(f"- {c['target']}: {c['value']} -> {verdict}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ measuring
def rss_mib() -> float:
    """Resident memory of this process (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


@dataclass
class RoundScore:
    """The confusion matrix of the frames scored so far (a round or a window)."""

    names: tuple[str, ...]
    frames: int = 0
    cm: ConfusionMatrix = field(init=False)

    def __post_init__(self):
        self.cm = ConfusionMatrix(len(self.names))

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        self.cm.update(pred, label)
        self.frames += 1

    def miou(self) -> float:
        return self.cm.result(list(self.names))["miou"]


class DriveLabels:
    """The drive's label maps (as class indices) and each frame's round, read once."""

    def __init__(self, drive: Path, classes):
        lut = classes.labelid_lut()
        folder = drive / "labels"
        with open(folder / "conditions.csv", newline="") as f:
            self.round_of = [int(r["round"]) for r in csv.DictReader(f)]
        self.maps = [torch.from_numpy(lut[cv2.imread(str(folder / f"frame_{i:06d}.png"), cv2.IMREAD_UNCHANGED)]
                                      .astype(np.int64)) for i in range(len(self.round_of))]


def soak(args, drive: Path, plan: DrivePlan, adapt: Optional[str]) -> dict:
    from sfda_deploy.adapt.online.adapter import OnlineAdapter
    from sfda_deploy.runtime.backends import load_backend
    from sfda_deploy.runtime.pipeline import stream_inference

    backend = load_backend(args.model, "torch", "cpu", threads=args.threads, adaptable=bool(adapt))
    adapter = OnlineAdapter(backend, adapt, args.adapt_every, reset=True, log=print) if adapt else None
    classes = backend.meta.classes
    names = tuple(classes.names)
    labels = DriveLabels(drive, classes) if args.labels else None
    windows, rounds = [], {}
    window_score = RoundScore(names)
    start = time.perf_counter()
    deadline, window_start, window_frames, loop = start + 60 * args.minutes, start, 0, 0
    while time.perf_counter() < deadline:
        source = open_source(str(drive / "drive.mp4"))
        for pred in stream_inference(source, backend, adapter=adapter):
            if labels is not None:
                label, pred_t = labels.maps[pred.info.index], torch.from_numpy(pred.mask.astype(np.int64))
                window_score.update(pred_t, label)
                key = loop * plan.rounds + labels.round_of[pred.info.index]
                rounds.setdefault(key, RoundScore(names)).update(pred_t, label)
            window_frames += 1
            now = time.perf_counter()
            if now - window_start >= args.window:
                miou = window_score.miou() if labels is not None else None
                windows.append(Window(round(now - start, 1), window_frames, now - window_start, rss_mib(), miou))
                print(f"  {adapt or 'no adaptation'}: {now - start:6.0f} s  {windows[-1].fps:6.2f} fps  "
                      f"RSS {windows[-1].rss_mib:7.1f} MiB" + (f"  mIoU {miou:.2f}" if miou is not None else ""),
                      flush=True)
                window_start, window_frames = now, 0
                window_score = RoundScore(names)
            if now >= deadline:
                break
        source.close()
        loop += 1
    backend.close()
    full = round_mious(rounds, plan.frames_per_round)
    checks = check_targets(windows, 60 * args.warmup_min, full, bool(adapt))
    return {"mode": adapt or "none", "windows": [asdict(w) | {"fps": w.fps} for w in windows],
            "full_rounds": full, "checks": checks, "loops": loop,
            "updates": adapter.state.updates if adapter else 0, "resets": adapter.state.resets if adapter else 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=60.0, help="Minutes per mode.")
    p.add_argument("--window", type=float, default=60.0, help="Seconds per window.")
    p.add_argument("--warmup-min", type=float, default=5.0, help="Minutes before memory growth is counted.")
    p.add_argument("--adapt", default="anchored", help="Online method of the adapted mode ('' for none).")
    p.add_argument("--adapt-every", type=int, default=8)
    p.add_argument("--modes", default="none,adapt", help="none, adapt or both (comma-separated), in order.")
    p.add_argument("--labels", action="store_true", help="Score mIoU per window and per round.")
    p.add_argument("--model", default=str(BUNDLED_MODEL))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--drive", default="runs/soak-drive", help="Drive folder (generated when missing).")
    p.add_argument("--conditions", default="real,fog,night,real")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--condition-frames", type=int, default=50)
    p.add_argument("--size", type=int, nargs=2, default=(128, 256))
    p.add_argument("--name", default="soak")
    args = p.parse_args(argv)
    plan = DrivePlan(parse_conditions(args.conditions), args.rounds, args.condition_frames, 40, tuple(args.size), 0)
    drive = Path(args.drive)
    if not (drive / "drive.json").is_file():
        generate_drive(drive, plan)
    results, tables = [], []
    for mode in args.modes.split(","):
        adapt = args.adapt if mode == "adapt" and args.adapt else None
        print(f"soak: {args.minutes:g} min, {adapt or 'no adaptation'}", flush=True)
        r = soak(args, drive, plan, adapt)
        results.append(r)
        tables.append(format_table(f"{r['mode']} ({r['loops']} loops of the drive, {r['updates']} updates, "
                                   f"{r['resets']} resets)", [Window(**{k: v for k, v in w.items() if k != 'fps'})
                                                              for w in r["windows"]], r["full_rounds"], r["checks"]))
        print(tables[-1], flush=True)
    run = new_run_dir("soak", args.name)
    write_json(run / "results.json", {"args": vars(args), "results": results})
    write_text(run / "table.md", "\n\n".join(tables) + "\n")
    print(f"results: {run / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
