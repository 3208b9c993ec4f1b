"""A/B of one CPU runtime setting, the two variants alternated ``--rounds`` times (medians), so load
from other jobs on a shared machine hits both alike.

    python -m scripts.runtime_ab spinning --size 256x512 --threads 2
        # ONNX Runtime: idle intra-op threads busy-wait (A, ONNX Runtime's default) or not (B, ours)
    python -m scripts.runtime_ab channels_last --size 512x1024 --threads 1
        # torch on CPU: contiguous (A, ours) vs channels_last (B) weights and input
    python -m scripts.runtime_ab bn_fold --size 1024x2048 --iters 2
        # torch on CPU: eager BatchNorm (A) vs folded into the convolutions (B, ours)
    python -m scripts.runtime_ab ort_opt --arch deeplabv2_r101 --size 512x1024 --iters 1
        # ONNX Runtime graph optimisation: all (A, NCHWc layout, the default) vs extended (B)
    python -m scripts.runtime_ab ort_vs_torch --size 1024x2048 --ort-opt all
        # torch fp32 (A) vs ONNX Runtime at --ort-opt (B): issue 5's ORT ÷ torch figure

Weights are random (speed does not depend on them). Nothing here is a test: the figures are printed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from scripts.runtime_speed import export_onnx
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.onnxrt import GRAPH_OPTIMIZATIONS
from sfda_deploy.runtime.bench import time_backend
from sfda_deploy.runtime.io import set_cpu_threads
from sfda_deploy.runtime.ort import OrtBackend
from sfda_deploy.runtime.torch_backend import TorchBackend


def torch_backend(model, meta, size, channels_last: bool, fold_bn: bool = True) -> TorchBackend:
    backend = TorchBackend(model, meta, "cpu", size, 1, fold_bn=fold_bn)
    if channels_last:  # TorchBackend uses channels_last on CUDA only: switch it on by hand here
        backend.model = backend.model.to(memory_format=torch.channels_last)
        backend.channels_last = True
    else:
        backend.model = backend.model.to(memory_format=torch.contiguous_format)
    return backend


def variants(args, model, meta, size, tmp: Path) -> tuple[dict, dict]:
    """The setting's two variants: labels and zero-argument openers of a fresh backend, "A" and "B"."""
    if args.setting == "bn_fold":
        labels = {"A": "torch, eager BatchNorm", "B": "torch, BatchNorm folded (default)"}
        return labels, {k: (lambda fold=(k == "B"): torch_backend(model, meta, size, False, fold)) for k in "AB"}
    if args.setting == "channels_last":
        labels = {"A": "torch, contiguous", "B": "torch, channels_last"}
        return labels, {k: (lambda cl=(k == "B"): torch_backend(model, meta, size, cl)) for k in "AB"}
    onnx_file = export_onnx(model, meta, size, tmp / "model.onnx")

    def ort(spinning=False, level="all"):
        return lambda: OrtBackend(onnx_file, "cpu", None, 1, args.threads, spinning, level)
    if args.setting == "spinning":
        return ({"A": "ONNX Runtime, spinning", "B": "ONNX Runtime, no spinning"},
                {"A": ort(spinning=True), "B": ort()})
    if args.setting == "ort_opt":
        return ({"A": "ONNX Runtime, --ort-opt all", "B": "ONNX Runtime, --ort-opt extended"},
                {"A": ort(level="all"), "B": ort(level="extended")})
    return ({"A": "torch fp32", "B": f"ONNX Runtime, --ort-opt {args.ort_opt}"},
            {"A": lambda: torch_backend(model, meta, size, False), "B": ort(level=args.ort_opt)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("setting", choices=["spinning", "channels_last", "bn_fold", "ort_opt", "ort_vs_torch"])
    p.add_argument("--arch", default="mobilenetv2_aspp")
    p.add_argument("--size", default="256x512", help="HxW")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--ort-opt", default="all", choices=GRAPH_OPTIMIZATIONS,
                   help="ONNX Runtime's graph optimisation in ort_vs_torch")
    args = p.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    set_cpu_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=19).eval()
    meta = ModelMeta(arch=args.arch, input_size=size)
    fps: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        labels, open_ = variants(args, model, meta, size, Path(tmp))
        for r in range(args.rounds):
            for k in ("A", "B") if r % 2 == 0 else ("B", "A"):  # alternate who goes first
                backend = open_[k]()
                fps[k].append(time_backend(backend, args.warmup, args.iters, progress=False)["fps"])
                backend.close()
    print(f"{args.arch} {size[0]}x{size[1]}, {args.threads} thread(s), {args.rounds} rounds of {args.iters} iters")
    for k in "AB":
        print(f"  {k} {labels[k]:<28} median {np.median(fps[k]):8.3f} fps   rounds {fps[k]}")
    print(f"  B / A = {np.median(fps['B']) / np.median(fps['A']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
