"""Runtime speed table: pure inference latency (p50/p90) and fps per backend, model and resolution,
plus end-to-end ``segment`` fps on a generated video (and its ratio to the pure figure).

Weights are random (speed does not depend on them); models come from ``sfda_deploy.models``.

    PYTHONPATH=. python scripts/runtime_speed.py                      # CPU: torch vs ONNX Runtime
    PYTHONPATH=. python scripts/runtime_speed.py --device cuda        # GPU: torch fp32 eager vs
                                                                      # fp16+channels_last(+CUDA graphs)
    PYTHONPATH=. python scripts/runtime_speed.py --archs deeplabv2_r101 --sizes 1024x2048 --iters 3

Nothing here is a test: the figures are printed (and written as JSON with --json-out).
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
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta, attach_to_onnx
from sfda_deploy.models import build_model
from sfda_deploy.runtime.backends import OrtBackend, TorchBackend, parse_device
from sfda_deploy.runtime.bench import time_backend


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


def end_to_end_fps(model_file: Path, backend: str, device: str, video: Path, runs_dir: Path) -> float:
    """``segment`` on ``video`` (overlay video written) → end-to-end fps from its summary."""
    from sfda_deploy.runtime.segment import run_segment

    os.environ["SFDA_RUNS_DIR"] = str(runs_dir)
    run = run_segment(SegmentConfig(source=str(video), model=str(model_file), backend=backend,
                                    device=device, name=f"{model_file.stem}-{backend}"))
    return json.loads((run / "summary.json").read_text())["fps_end_to_end"]


def variants(device: str) -> list[tuple[str, dict]]:
    """(label, TorchBackend options) to time: fp32 on CPU; fp32 eager vs fp16 variants on CUDA."""
    if not device.startswith("cuda"):
        return [("torch fp32", {})]
    eager = {"half": False, "channels_last": False, "cuda_graphs": False}
    return [("torch fp32 eager", eager),
            ("torch fp16+channels_last", {"half": True, "channels_last": True, "cuda_graphs": False}),
            ("torch fp16+channels_last+graphs", {"half": True, "channels_last": True, "cuda_graphs": True})]


def measure(args, arch: str, size: tuple[int, int], work: Path) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=19).eval()
    meta = ModelMeta(arch=arch, input_size=size)
    rows = []

    def row(label, backend, **extra):
        r = time_backend(backend, args.warmup, args.iters)
        rows.append({"arch": arch, "size": f"{size[0]}x{size[1]}", "backend": label, **extra,
                     **{k: r[k] for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "fps", "providers")}})
        print(f"  {label:<34} p50 {r['p50_ms']:9.1f} ms  p90 {r['p90_ms']:9.1f} ms  {r['fps']:8.2f} fps",
              flush=True)

    for label, options in variants(args.device):
        backend = TorchBackend(model, meta, args.device, size, 1, **options)
        row(label, backend)
        backend.close()
    model = model.cpu()
    if "onnxruntime" in args.backends:
        onnx_file = export_onnx(model, meta, size, work / f"{arch}_{size[0]}x{size[1]}.onnx")
        try:
            backend = OrtBackend(onnx_file, args.device, None, 1, threads=args.threads)
        except SfdaError as e:  # e.g. --device cuda with the CPU build of onnxruntime
            print(f"  onnxruntime skipped: {e}", flush=True)
        else:
            row("onnxruntime", backend)
            backend.close()
            if args.e2e_frames:
                rows[-1]["e2e_fps"] = e2e(args, onnx_file, "onnxruntime", size, work)
    if args.e2e_frames:
        ckpt = save_checkpoint(work / f"{arch}_{size[0]}x{size[1]}.safetensors", model, meta)
        rows[len(variants(args.device)) - 1]["e2e_fps"] = e2e(args, ckpt, "torch", size, work)
    for r in rows:
        if "e2e_fps" in r:
            r["e2e_over_pure"] = round(r["e2e_fps"] / r["fps"], 3)
            print(f"  {r['backend']:<34} segment end to end {r['e2e_fps']:8.2f} fps = "
                  f"{r['e2e_over_pure']:.2f} x pure inference", flush=True)
    return rows


def e2e(args, model_file: Path, backend: str, size: tuple[int, int], work: Path) -> float:
    video = work / f"video_{size[0]}x{size[1]}.mp4"
    if not video.exists():
        make_video(video, size, args.e2e_frames)
    return end_to_end_fps(model_file, backend, args.device, video, work / "runs")


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
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch and ONNX Runtime)")
    p.add_argument("--e2e-frames", type=int, default=0, help="also run segment on a video of N frames")
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    try:
        args.device = parse_device(args.device)
    except SfdaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
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
