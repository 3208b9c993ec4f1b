"""CPU inference of one checkpoint, every backend alternated: fp32 ONNX, INT8 for ONNX Runtime's CPU
provider (``export --int8-cpu``), INT8 Q/DQ (``export --int8``, TensorRT's file) and torch with BatchNorm
folded, against the core's own sgemm rate.

    OMP_NUM_THREADS=1 python -m scripts.cpu_int8 --data data/synth/real \\
        --sizes 512x1024 1024x2048 --iters 8 --calib-count 32 --val 10

Per size: each file is exported (and calibrated on ``--calib-count`` target TRAIN frames of ``--data``),
then all backends are timed call by call in turn (A, B, C, D, A, ...: ``bench.time_backends``) so load
from other processes hits each alike; ms is the median. GFLOP/frame comes from torch's FLOP counter
(convolutions and matmuls, 2 FLOP per multiply-add); % of sgemm divides each backend's GFLOP/s by
the core's best fp32 GEMM rate on 4096² matrices with the same thread count, measured in this process:
``torch.mm`` (MKL, which takes slower code paths on AMD CPUs) and numpy's ``@`` (OpenBLAS), the higher of
the two. INT8 kernels have a higher ceiling of their own (VNNI: 4 int8 multiply-adds per 32-bit lane), so
INT8 can pass 100 %. ΔmIoU is each file's mIoU minus torch fp32's on ``--val`` labelled target VAL
frames (resized to the size).
The Q/DQ file is calibrated with MinMax here (export's entropy calibrator takes many minutes at these
sizes; its speed does not depend on the ranges). Nothing here is a test: the figures are printed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sfda_deploy.assets import BUNDLED_MODEL
from sfda_deploy.checkpoint import load_model
from sfda_deploy.data import frames as F
from sfda_deploy.device import cpu_native_bf16
from sfda_deploy.export.calibration import Int8Options, quantize_qdq
from sfda_deploy.export.cpu_int8 import quantize_cpu
from sfda_deploy.export.onnx import export_module, save_onnx
from sfda_deploy.export.verify import compare_runners, open_runner, torch_runner
from sfda_deploy.models import build_model
from sfda_deploy.runtime.bench import time_backends
from sfda_deploy.runtime.io import set_cpu_threads
from sfda_deploy.runtime.ort import OrtBackend
from sfda_deploy.runtime.torch_backend import TorchBackend


def _rate(product, n: int, repeats: int) -> float:
    """Median GFLOP/s of ``product()`` (one ``n``³ fp32 matrix product, 2·n³ FLOP) over ``repeats`` calls."""
    product()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(seconds)) / 1e9


def sgemm_gflops(threads: int, n: int = 4096, repeats: int = 5) -> dict[str, float]:
    """fp32 matrix-product rates of this core on ``n``² matrices: ``torch.mm`` (MKL/oneDNN) on ``threads``
    threads, and numpy's ``@`` (OpenBLAS; its threads follow OMP_NUM_THREADS), GFLOP/s each."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    x, y = a.numpy(), b.numpy()
    return {"torch.mm": _rate(lambda: torch.mm(a, b), n, repeats), "numpy": _rate(lambda: x @ y, n, repeats)}


def gflop_per_frame(model, size: tuple[int, int]) -> float:
    """Convolution/matmul GFLOP of one ``[1,3,H,W]`` forward pass (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *size))
    return counter.get_total_flops() / 1e9


def export_files(model, meta, size, calib, tmp: Path, qdq: bool = True) -> dict[str, Path]:
    """fp32, INT8-CPU and (``qdq``) INT8 Q/DQ ONNX files of ``model`` at ``size`` in ``tmp``."""
    sized = meta.replace(input_size=size, extra={**meta.extra, "precision": "fp32", "imgsz": list(size)})
    files = {"fp32 ONNX": tmp / "model.onnx", "INT8 CPU": tmp / "model_int8_cpu.onnx",
             "INT8 Q/DQ": tmp / "model_int8.onnx"}
    save_onnx(export_module(model, size, 1, False, 18, "logits", "int32"), sized, files["fp32 ONNX"])
    int8 = sized.replace(extra={**sized.extra, "precision": "int8"})
    quantize_cpu(files["fp32 ONNX"], files["INT8 CPU"], calib, int8)
    if qdq:
        quantize_qdq(files["fp32 ONNX"], files["INT8 Q/DQ"], calib, int8, Int8Options(method="minmax"))
    else:
        del files["INT8 Q/DQ"]
    return files


def fidelity(model, meta, files, val, size) -> dict[str, float]:
    """ΔmIoU of each file against torch fp32 (None when not measured: the folded torch backend, whose
    arithmetic differs only by rounding, and every file without ``val`` frames)."""
    out = {name: None for name in [*files, "torch folded"]}
    if not val:
        return out
    images, labels = F.stack(val)
    reference = torch_runner(model, meta, BUNDLED_MODEL, "cpu", size)
    for name, path in files.items():
        runner = open_runner(path, "cpu")
        try:
            out[name] = compare_runners(reference, runner, images, labels, desc=f"ΔmIoU {name}")["delta_miou"]
        finally:
            runner.close()
    if cpu_native_bf16():  # the torch backend's bf16 is not rounding alone: measure it like a file
        runner = torch_runner(model, meta, BUNDLED_MODEL, "cpu", size, cpu_bf16=True)
        try:
            out["torch folded bf16"] = compare_runners(reference, runner, images, labels,
                                                       desc="ΔmIoU torch bf16")["delta_miou"]
        finally:
            runner.close()
    return out


def measure_size(args, model, meta, size, sgemm: float) -> list[str]:
    """Markdown rows for one size."""
    calib = F.read_frames(Path(args.data) / "leftImg8bit" / "train", size, args.calib_count, meta.classes,
                          what="--data")
    val = F.read_frames(Path(args.data) / "leftImg8bit" / "val", size, args.val, meta.classes) if args.val else []
    gflop = gflop_per_frame(model, size)
    with tempfile.TemporaryDirectory() as tmp:
        files = export_files(model, meta, size, calib, Path(tmp), qdq=not args.no_qdq)
        deltas = fidelity(model, meta, files, val, size)
        backends = [OrtBackend(path, "cpu", None, 1, threads=args.threads) for path in files.values()]
        backends.append(TorchBackend(model, meta, "cpu", size, 1, cpu_bf16=False))  # BatchNorm folded
        if cpu_native_bf16():  # what segment runs on this CPU: bf16 autocast, channels_last
            backends.append(TorchBackend(model, meta, "cpu", size, 1, cpu_bf16=True))
        try:
            rows = time_backends(backends, args.warmup, args.iters, progress=True)
        finally:
            for b in backends:
                b.close()
    names = [*files, "torch folded", "torch folded bf16"][:len(rows)]
    fp32_ms = rows[0]["p50_ms"]
    lines = []
    print(f"{size[0]}x{size[1]}: {gflop:.1f} GFLOP per frame (conv + matmul)", flush=True)
    for name, r in zip(names, rows):
        rate = gflop / (r["p50_ms"] / 1000)
        delta = "–" if deltas.get(name) is None else f"{deltas[name]:+.2f}"
        lines.append(f"| {size[0]}×{size[1]} | {name} | {r['p50_ms']:.0f} | {r['fps']:.2f} | "
                     f"{fp32_ms / r['p50_ms']:.2f}× | {rate:.1f} | {100 * rate / sgemm:.0f} % | {delta} | "
                     f"{r['spread_pct']:.0f} % |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(BUNDLED_MODEL))
    p.add_argument("--arch", help="time this architecture with random weights instead of --checkpoint "
                   "(speed only: use with --val 0)")
    p.add_argument("--no-qdq", action="store_true", help="leave out TensorRT's Q/DQ file (minutes per frame on "
                   "CPU for big nets)")
    p.add_argument("--data", required=True, help="labelled target benchmark (Cityscapes layout: train + val)")
    p.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"], help="HxW")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--val", type=int, default=10, help="labelled val frames for ΔmIoU")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args(argv)
    set_cpu_threads(args.threads)
    rates = sgemm_gflops(args.threads)
    sgemm = max(rates.values())  # the core's best measured fp32 GEMM rate: the roofline's ceiling
    print(f"sgemm 4096², {args.threads} thread(s): " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
          + f" GFLOP/s; % of sgemm below is of {sgemm:.1f}", flush=True)
    model, meta = load_model(args.checkpoint, "cpu")
    if args.arch:  # random weights: the speed of a net does not depend on them
        torch.manual_seed(0)
        model, meta = build_model(args.arch, num_classes=meta.num_classes).eval(), meta.replace(arch=args.arch)
    head = ("| size | backend | ms p50 | fps | × fp32 ONNX | GFLOP/s | % of sgemm | ΔmIoU | spread |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for text in args.sizes:
        rows += measure_size(args, model, meta, tuple(int(v) for v in text.lower().split("x")), sgemm)
    set_cpu_threads(args.threads)
    after = sgemm_gflops(args.threads)
    print("sgemm after the runs: " + ", ".join(f"{k} {v:.1f}" for k, v in after.items()) + " GFLOP/s")
    print(f"{meta.arch}, {args.threads} thread(s), {args.iters} alternated rounds after {args.warmup} warm-up calls")
    print(head)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
