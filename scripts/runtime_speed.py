"""Runtime speed table: pure inference latency (p50/p90) and fps per backend, model and resolution,
plus end-to-end ``segment`` fps on a generated video (and its ratio to the pure figure).

Weights are random (speed does not depend on them); models come from ``sfda_deploy.models``.

    python -m scripts.runtime_speed                      # CPU: torch vs ONNX Runtime
    python -m scripts.runtime_speed --device cuda        # GPU: torch fp32 eager vs
                                                                      # fp16+channels_last(+CUDA graphs)
    python -m scripts.runtime_speed --archs deeplabv2_r101 --sizes 1024x2048 --iters 3
    python -m scripts.runtime_speed --sizes 256x512 --threads 1 --e2e-frames 60 --rounds 3
        # segment fps ÷ pure fps, both on the same model file, backend and thread count, alternated

Nothing here is a test: the figures are printed (and written as JSON with --json-out). Backends are
timed one after the other; on a machine whose speed drifts, compare two settings with
``scripts/runtime_ab.py`` instead (alternated rounds, medians).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.config import SegmentConfig
from sfda_deploy.device import parse_device
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta, attach_to_onnx
from sfda_deploy.models import build_model
from sfda_deploy.onnxrt import GRAPH_OPTIMIZATIONS
from sfda_deploy.runtime.backends import load_backend
from sfda_deploy.runtime.bench import time_backend
from sfda_deploy.runtime.io import set_cpu_threads
from sfda_deploy.runtime.torch_backend import TorchBackend


def export_onnx(model: torch.nn.Module, meta: ModelMeta, size: tuple[int, int], path: Path) -> Path:
    """Static-shape fp32 ONNX (batch 1) with metadata, as ``sfda-deploy export`` writes it."""
    import onnx

    torch.onnx.export(model.cpu().eval(), (torch.zeros(1, 3, *size),), str(path), opset_version=18,
                      dynamo=False, input_names=["images"], output_names=["logits"])
    proto = onnx.load(str(path))
    attach_to_onnx(proto, meta.replace(extra={"output": "logits", "dynamic": False, "imgsz": list(size),
                                              "batch": 1, "precision": "fp32"}))
    onnx.save(proto, str(path))
    return path


def make_video(path: Path, size: tuple[int, int], frames: int, fps: float = 30.0) -> Path:
    """A moving gradient video (mp4v) at ``size``, so decode/encode cost real work."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    for i in range(frames):
        frame = (ramp + 8 * i + np.zeros((h, 1, 3), np.float32)) % 256
        writer.write(frame.astype(np.uint8))
    writer.release()
    return path


def segment_fps(model_file: Path, backend: str, args, video: Path, runs_dir: Path) -> float:
    """``segment`` on ``video`` (overlay video written) → end-to-end fps from its summary."""
    from sfda_deploy.commands.segment import run_segment

    os.environ["SFDA_RUNS_DIR"] = str(runs_dir)
    run = run_segment(SegmentConfig(source=str(video), model=str(model_file), backend=backend,
                                    device=args.device, threads=args.threads, ort_opt=args.ort_opt,
                                    name=f"{model_file.stem}-{backend}"))
    return json.loads((run / "summary.json").read_text())["fps_end_to_end"]


def pure_row(backend, args) -> dict:
    """``time_backend`` on an open backend (closed afterwards): latency statistics and fps."""
    try:
        r = time_backend(backend, args.warmup, args.iters)
    finally:
        backend.close()
    return {k: r[k] for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "fps", "providers")}


def variants(device: str) -> list[tuple[str, dict]]:
    """Extra torch settings timed (pure inference only) besides what ``load_backend`` opens:
    on CUDA fp32 eager and fp16+channels_last without CUDA graphs; none on CPU."""
    if not device.startswith("cuda"):
        return []
    return [("torch fp32 eager", {"half": False, "channels_last": False, "cuda_graphs": False}),
            ("torch fp16+channels_last", {"half": True, "channels_last": True, "cuda_graphs": False})]


def median(values: list[float]) -> float:
    return float(np.median(values))


def measure(args, arch: str, size: tuple[int, int], work: Path) -> list[dict]:
    """Rows for one arch and size: pure inference per backend, and, with ``--e2e-frames``, pure
    and ``segment`` alternated ``--rounds`` times on the same model file and backend settings
    (same ``--threads``), reported as medians."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=19).eval()
    meta = ModelMeta(arch=arch, input_size=size)
    stem = work / f"{arch}_{size[0]}x{size[1]}"
    files = {"torch": save_checkpoint(stem.with_suffix(".safetensors"), model, meta)}
    if "onnxruntime" in args.backends:
        files["onnxruntime"] = export_onnx(model, meta, size, stem.with_suffix(".onnx"))
    video = make_video(work / f"video_{size[0]}x{size[1]}.mp4", size, args.e2e_frames) if args.e2e_frames else None
    base = {"arch": arch, "size": f"{size[0]}x{size[1]}", "threads": args.threads}
    rows = []
    for label, options in variants(args.device):
        if "torch" in args.backends:
            rows.append({**base, "backend": label,
                         **pure_row(TorchBackend(model, meta, args.device, size, 1, **options), args)})
            report(rows[-1])
    for kind in args.backends:
        label = "torch" + (" fp16+channels_last+graphs" if args.device != "cpu" else " fp32")
        label = label if kind == "torch" else kind
        pures, e2es = [], []
        try:
            for _ in range(args.rounds if video else 1):
                backend = load_backend(str(files[kind]), kind, args.device, None, 1, args.threads, args.ort_opt)
                pures.append(pure_row(backend, args))
                if video:
                    e2es.append(segment_fps(files[kind], kind, args, video, work / "runs"))
        except SfdaError as e:  # e.g. --device cuda with the CPU build of onnxruntime
            print(f"  {kind} skipped: {e}", flush=True)
            continue
        middle = sorted(pures, key=lambda p: p["fps"])[len(pures) // 2]  # latencies of the median round
        row = {**base, "backend": label, **middle,
               "fps": round(median([p["fps"] for p in pures]), 3), "fps_rounds": [p["fps"] for p in pures]}
        if e2es:
            row.update(e2e_fps=round(median(e2es), 3), e2e_fps_rounds=e2es,
                       e2e_over_pure=round(median(e2es) / row["fps"], 3))
        rows.append(row)
        report(row)
    return rows


def report(r: dict) -> None:
    print(f"  {r['backend']:<34} p50 {r['p50_ms']:9.1f} ms  p90 {r['p90_ms']:9.1f} ms  {r['fps']:8.2f} fps",
          flush=True)
    if "e2e_fps" in r:
        print(f"  {'':<34} segment end to end {r['e2e_fps']:8.2f} fps = {r['e2e_over_pure']:.2f} x pure "
              f"(medians of {len(r['e2e_fps_rounds'])}; pure {r['fps_rounds']}, segment {r['e2e_fps_rounds']})",
              flush=True)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'arch':<18} {'size':>10} {'backend':<34} {'p50 ms':>9} {'p90 ms':>9} {'fps':>8} "
          f"{'e2e fps':>8} {'vs first':>8}")
    first: dict = {}
    for r in rows:
        base = first.setdefault((r["arch"], r["size"]), r["fps"])
        e2e_fps = f"{r['e2e_fps']:8.2f}" if "e2e_fps" in r else f"{'-':>8}"
        print(f"{r['arch']:<18} {r['size']:>10} {r['backend']:<34} {r['p50_ms']:9.1f} {r['p90_ms']:9.1f} "
              f"{r['fps']:8.2f} {e2e_fps} {r['fps'] / base:7.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--archs", nargs="+", default=["mobilenetv2_aspp"])
    p.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"], help="HxW")
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of every backend opened, pure and segment alike (default: all cores)")
    p.add_argument("--ort-opt", default="all", choices=GRAPH_OPTIMIZATIONS,
                   help="ONNX Runtime graph optimisation (segment's --ort-opt)")
    p.add_argument("--e2e-frames", type=int, default=0, help="also run segment on a video of N frames")
    p.add_argument("--rounds", type=int, default=3,
                   help="with --e2e-frames: pure and segment alternated this many times (medians)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    try:
        args.device = parse_device(args.device)
    except SfdaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    set_cpu_threads(args.threads)  # the same cap load_backend applies to every backend it opens
    print(f"device {args.device}: {torch.cuda.get_device_name(args.device) if args.device != 'cpu' else 'CPU'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            for spec in args.sizes:
                size = tuple(int(v) for v in spec.lower().split("x"))
                print(f"{arch} at {size[0]}x{size[1]}:", flush=True)
                rows += measure(args, arch, size, Path(tmp))
    print_table(rows)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
