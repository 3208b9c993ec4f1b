"""Ray throughput: ``segment --ray`` with N single-thread workers vs one single-thread process, same videos.

    OMP_NUM_THREADS=1 python -m scripts.ray_throughput            # 6 videos x 200 frames, 2 workers
    OMP_NUM_THREADS=1 python -m scripts.ray_throughput --videos 4 --frames 50 --rounds 1

Both sides run the same code on the same generated videos (the bundled model, torch on CPU, one
inference thread each, the default outputs: overlay video and legend): the process side is one
``fleet.SegmentWorker`` in this process taking the videos one after the other; the Ray side is
``fleet.run_fleet`` on a local cluster of ``--workers`` CPUs. Ray's own start-up (``ray.init``) is
done once before the rounds and left out; each side's backend loading is timed in. Rounds alternate
(process, Ray, process, Ray ...) and the table gives every round and the medians, with the load
average before each run (a busy machine slows both; the ratio is what to read).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def make_videos(folder: Path, count: int, frames: int, size=(128, 256)) -> list[str]:
    """``count`` videos of ``frames`` frames: a moving colour gradient with noise (codec work like a drive's)."""
    rng = np.random.default_rng(0)
    h, w = size
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    paths = []
    for v in range(count):
        path = folder / f"drive_{v}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
        for i in range(frames):
            base = (ramp + 3 * i + 40 * v) % 256 * np.ones((h, 1, 3), np.float32)
            writer.write(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
        writer.release()
        paths.append(str(path))
    return paths


def one_process(cfg, videos: list[str], out: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one single-thread worker (in this process) segmenting every video in turn."""
    from sfda_deploy.commands.fleet import SegmentWorker
    from sfda_deploy.messages import set_reporter

    start = time.perf_counter()
    previous = set_reporter(lambda line, err: None)
    try:
        worker = SegmentWorker(cfg, "cpu", 1)
        cpu = sum(worker.segment(video, str(out / Path(video).name))["cpu_s"] for video in videos)
    finally:
        set_reporter(previous)
    return time.perf_counter() - start, cpu


def on_ray(cfg, videos: list[str]) -> tuple[float, float]:
    """(wall s, the workers' CPU s) of ``run_fleet`` (workers started and fed here; the cluster already up)."""
    from sfda_deploy.commands.fleet import run_fleet
    from sfda_deploy.messages import set_reporter

    previous = set_reporter(lambda line, err: None)
    start = time.perf_counter()
    try:
        run_dir = run_fleet(cfg, videos)
    finally:
        set_reporter(previous)
    wall = time.perf_counter() - start
    return wall, json.loads((run_dir / "summary.json").read_text())["worker_cpu_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import ray
    import torch

    from sfda_deploy.config import SegmentConfig
    from sfda_deploy.progress import hide_bars

    torch.set_num_threads(1)
    hide_bars()
    with tempfile.TemporaryDirectory(prefix="ray_throughput-") as tmp:
        root = Path(tmp)
        os.environ["SFDA_RUNS_DIR"] = str(root / "runs")
        videos = make_videos(root, args.videos, args.frames)
        total = args.videos * args.frames
        cfg = SegmentConfig(threads=1, ray=True, ray_actors=args.workers, name="fleet")
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        rows = []
        try:
            for r in range(args.rounds):
                out = root / f"process_{r}"
                out.mkdir()
                load_p = os.getloadavg()[0]
                t_p, cpu_p = one_process(cfg, videos, out)
                load_r = os.getloadavg()[0]
                t_r, cpu_r = on_ray(cfg, videos)
                rows.append((r + 1, t_p, t_r, load_p, load_r, cpu_p, cpu_r))
                print(f"round {r + 1}: one process {t_p:.1f} s, ray x{args.workers} {t_r:.1f} s", flush=True)
        finally:
            ray.shutdown()
    print(f"\n{args.videos} videos x {args.frames} frames (128x256), bundled model, torch CPU, 1 inference thread "
          f"per worker; {os.cpu_count()} CPUs visible; Ray start-up excluded")
    print("| round | one process s | fps | ray x%d s | fps | speed-up | CPU ms/frame (proc / ray workers) | "
          "load avg before (proc / ray) |" % args.workers)
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r, t_p, t_r, load_p, load_r, cpu_p, cpu_r in rows:
        print(f"| {r} | {t_p:.1f} | {total / t_p:.1f} | {t_r:.1f} | {total / t_r:.1f} | {t_p / t_r:.2f}x | "
              f"{1000 * cpu_p / total:.1f} / {1000 * cpu_r / total:.1f} | {load_p:.2f} / {load_r:.2f} |")
    med_p, med_r = statistics.median(r[1] for r in rows), statistics.median(r[2] for r in rows)
    print(f"| median | {med_p:.1f} | {total / med_p:.1f} | {med_r:.1f} | {total / med_r:.1f} | {med_p / med_r:.2f}x "
          "| | |")


if __name__ == "__main__":
    main()
