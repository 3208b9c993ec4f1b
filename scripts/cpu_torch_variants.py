"""Which of oneDNN's CPU paths makes the torch backend faster: channels_last, bf16 autocast, torch.compile.

    OMP_NUM_THREADS=1 python -m scripts.cpu_torch_variants --data data/synth/real --size 512x1024

The bundled model with BatchNorm folded (what ``segment`` runs on CPU) in four forms, timed call by call in
turn (A, B, C, D, A, …: ``runtime.timing.alternate``) after warm-up calls, medians; each call is one frame
with the arg-max. Fidelity: pixel agreement with fp32 and mIoU of each form on ``--val`` labelled target
val frames at their own size (the size the model was trained at; the forms do not depend on the size).
GFLOP/frame from torch's FLOP counter. Nothing here is a test: it prints.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch


def variants(model, cl_model, compile_: bool) -> dict:
    """name → function(x fp32 NCHW) → label map; all under inference_mode."""
    out = {"fp32": lambda x: model(x).argmax(1),
           "fp32 channels_last": lambda x: cl_model(x.contiguous(memory_format=torch.channels_last)).argmax(1)}

    def bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return cl_model(x.contiguous(memory_format=torch.channels_last)).argmax(1)

    out["bf16 autocast channels_last"] = bf16
    if compile_:
        compiled = torch.compile(model)
        out["torch.compile fp32"] = lambda x: compiled(x).argmax(1)
    return out


def main(argv=None) -> int:
    from torch.utils.data import DataLoader

    from scripts.cpu_int8 import gflop_per_frame  # the same FLOP count as the ONNX table
    from sfda_deploy.assets import BUNDLED_MODEL
    from sfda_deploy.checkpoint import load_model
    from sfda_deploy.data import build_dataset
    from sfda_deploy.metrics import ConfusionMatrix
    from sfda_deploy.runtime.fusion import fold_conv_bn
    from sfda_deploy.runtime.timing import alternate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(BUNDLED_MODEL))
    p.add_argument("--data", default="data/synth/real", help="labelled target benchmark (Cityscapes layout, val split)")
    p.add_argument("--size", default="512x1024", help="HxW")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--val", type=int, default=10)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--arch", help="time this architecture with random weights instead of --checkpoint (no "
                   "fidelity columns: random weights have no meaningful mIoU)")
    p.add_argument("--forms", default="", help="comma-separated subset of the forms to time (default: all)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    if args.arch:
        from sfda_deploy.metadata import ModelMeta
        from sfda_deploy.models import build_model

        torch.manual_seed(0)
        model, meta, args.val = build_model(args.arch, num_classes=19), ModelMeta(arch=args.arch), 0
    else:
        model, meta = load_model(args.checkpoint, "cpu")
    model, folded = fold_conv_bn(model.eval())
    cl_model = model.to(memory_format=torch.channels_last)
    print(f"cpu: {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{folded} BatchNorms folded, {h}x{w}")
    x = meta.normalize(torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, h, w)).astype(np.float32)))
    forms = variants(model, cl_model, not args.no_compile)
    if args.forms:
        forms = {k: v for k, v in forms.items() if k in args.forms.split(",") or k == "fp32"}
    with torch.inference_mode():
        flop = gflop_per_frame(model, (h, w))
        for f in forms.values():
            for _ in range(args.warmup):
                f(x)
        seconds = alternate([lambda f=f: f(x) for f in forms.values()], args.iters)
        val = build_dataset("cityscapes", args.data, "val", class_set=meta.class_set) if args.val else []
        loader = DataLoader(torch.utils.data.Subset(val, range(min(args.val, len(val)))), batch_size=1)
        agree = {n: [] for n in forms}
        cms = {n: ConfusionMatrix(meta.num_classes) for n in forms}
        for batch in loader:
            img, lab = batch["image"].float(), batch["label"]  # at the frames' own size (the model's)
            preds = {n: f(meta.normalize(img)) for n, f in forms.items()}
            for n, pr in preds.items():
                agree[n].append((pr == preds["fp32"]).float().mean().item())
                cms[n].update(pr, lab.long())
    base = statistics.median(seconds[0])
    print(f"GFLOP/frame {flop:.1f}")
    print(f"| form | ms p50 | × fp32 | GFLOP/s | pixel agreement with fp32 | mIoU ({len(agree['fp32'])} val) |")
    print("|---|---:|---:|---:|---:|---:|")
    for (name, _), s in zip(forms.items(), seconds):
        ms = 1000 * statistics.median(s)
        print(f"| {name} | {ms:.0f} | {base * 1000 / ms:.2f}× | {flop / (ms / 1000):.1f} | "
              + (f"{100 * statistics.mean(agree[name]):.2f} % | {cms[name].result(meta.classes.names)['miou']:.2f} |"
               if agree[name] else "– | – |"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
