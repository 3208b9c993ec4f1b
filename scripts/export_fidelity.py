"""Export fidelity of a TRAINED checkpoint: torch fp32 vs ONNX fp32 / fp16 / INT8 Q/DQ (ONNX Runtime CPU).

Generates a labelled synthetic benchmark (``sfda_deploy.data.synthetic.generate``: the source style
and the target style), exports the checkpoint the way ``sfda-deploy export`` does, calibrates INT8 on
the TARGET style's train frames, and compares every file with torch fp32 on the target val frames:
argmax agreement %, max |Δlogit|, mIoU of each and ΔmIoU vs torch.

    OMP_NUM_THREADS=1 python -m scripts.export_fidelity                       # the bundled model
    OMP_NUM_THREADS=1 python -m scripts.export_fidelity --checkpoint runs/adapt/atp/model.safetensors
    OMP_NUM_THREADS=1 python -m scripts.export_fidelity --no-fp16 --variants default minmax per-tensor

``--variants`` compares INT8 quantizer settings (``export.calibration.Int8Options``); ``default`` is
what ``sfda-deploy export --int8`` uses. Targets (issue 6): fp32 agreement ≥ 99.99 %, fp16
ΔmIoU ≤ 0.1, INT8 ΔmIoU ≤ 0.5 (absolute).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

# name → changes from the default Int8Options (the export's default is "default")
VARIANTS = {
    "default": {},
    "minmax": {"method": "minmax"},
    "percentile": {"method": "percentile"},
    "per-channel": {"per_channel": True},
    "asymmetric": {"symmetric": False},
    "float-head": {"float_head": True},
}
TARGETS = {"fp32": ("argmax_agreement", 99.99), "fp16": ("delta_miou", 0.1), "int8": ("delta_miou", 0.5)}


def _meets(precision: str, r: dict) -> str:
    key, bound = TARGETS[precision]
    value = r[key]
    if value is None:
        return "?"
    ok = value >= bound if key == "argmax_agreement" else abs(value) <= bound
    return "yes" if ok else "NO"


def _row(name: str, precision: str, r: dict, seconds: float) -> str:
    diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
    return (f"| {name} | {r['argmax_agreement']:.4f} | {diff} | {r['miou_b']:.2f} | {r['delta_miou']:+.2f} | "
            f"{_meets(precision, r)} | {r['latency_ms_b']:.1f} | {seconds:.0f} |")


def main() -> None:
    from sfda_deploy.assets import BUNDLED_MODEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(BUNDLED_MODEL), help="trained checkpoint (default: bundled model)")
    parser.add_argument("--style", default="real", help="target style of the synthetic benchmark")
    parser.add_argument("--imgsz", nargs=2, type=int, default=[128, 256], help="H W of data and export")
    parser.add_argument("--train", type=int, default=300, help="target train frames to generate")
    parser.add_argument("--calib-count", type=int, default=300, help="of which INT8 calibrates on the first N")
    parser.add_argument("--val", type=int, default=50, help="target val frames (labelled) to compare on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="where to generate (or reuse) the benchmark (default: a temp dir)")
    parser.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS),
                        help="INT8 quantizer settings to compare")
    parser.add_argument("--no-fp16", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


def run(args, tmp: Path) -> None:
    from sfda_deploy.checkpoint import load_model
    from sfda_deploy.commands.export import export_meta
    from sfda_deploy.config import ExportConfig
    from sfda_deploy.data.frames import read_frames, stack
    from sfda_deploy.data.synthetic import generate
    from sfda_deploy.export.calibration import Int8Options, quantize_qdq
    from sfda_deploy.export.onnx import check_imgsz, convert_fp16, export_module, save_onnx
    from sfda_deploy.export.verify import compare_runners, open_runner, torch_runner

    imgsz = tuple(args.imgsz)
    root = Path(args.data_dir) if args.data_dir else tmp / "data"
    generate(root, ["source", args.style], {"train": args.train, "val": args.val}, imgsz, args.seed)
    model, meta = load_model(args.checkpoint, "cpu")
    check_imgsz(imgsz, model.output_stride)
    target = root / args.style / "leftImg8bit"
    images, labels = stack(read_frames(target / "val", imgsz, args.val, meta.classes))
    calib = read_frames(target / "train", imgsz, args.calib_count, meta.classes, what="calibration")
    cfg = ExportConfig(checkpoint=args.checkpoint, imgsz=imgsz)
    reference = torch_runner(model, meta, Path(args.checkpoint), "cpu", imgsz)

    def measure(name: str, precision: str, path: Path, start: float) -> str:
        runner = open_runner(path, "cpu")
        try:
            r = compare_runners(reference, runner, images, labels, desc=name)
        finally:
            runner.close()
        rows.append(_row(name, precision, r, time.perf_counter() - start))
        print(rows[-1], flush=True)
        return f"{r['miou_a']:.2f}"

    rows: list[str] = []
    start = time.perf_counter()
    fp32 = tmp / "fp32.onnx"
    save_onnx(export_module(model, imgsz, 1, False, cfg.opset, "logits", "int32"),
              export_meta(meta, cfg, imgsz, "fp32", model.output_stride), fp32)
    torch_miou = measure("ONNX fp32", "fp32", fp32, start)
    if not args.no_fp16:
        start = time.perf_counter()
        convert_fp16(fp32, tmp / "fp16.onnx", export_meta(meta, cfg, imgsz, "fp16", model.output_stride))
        measure("ONNX fp16", "fp16", tmp / "fp16.onnx", start)
    for variant in args.variants:
        start = time.perf_counter()
        options = dataclasses.replace(Int8Options(), **VARIANTS[variant])
        path = tmp / f"int8_{variant}.onnx"
        quantize_qdq(fp32, path, calib, export_meta(meta, cfg, imgsz, "int8", model.output_stride), options)
        measure(f"ONNX int8 {variant} ({options.method}, {'per-channel' if options.per_channel else 'per-tensor'}, "
                f"{'sym' if options.symmetric else 'asym'}"
                f"{', float head' if options.float_head else ''})", "int8", path, start)

    print(f"\nfidelity vs torch fp32 (mIoU {torch_miou}), ONNX Runtime CPU, {imgsz[0]}x{imgsz[1]}, "
          f"checkpoint {args.checkpoint}, synthetic '{args.style}' val: {len(images)} frames (seed {args.seed}), "
          f"INT8 calibrated on {len(calib)} '{args.style}' train frames")
    print("| file | argmax agreement % | max abs logit diff | mIoU | ΔmIoU | target met | ORT ms/img | s to make+check |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
