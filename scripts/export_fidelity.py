"""Export fidelity table: torch vs ONNX Runtime (CPU) for fp32, fp16 and INT8 Q/DQ ONNX, per architecture.

Runs the real ``sfda-deploy export`` pipeline (``run_export``: the parity gate included) on each
architecture and prints argmax agreement, max |Δlogit| and ΔmIoU (when ``--data`` has labels).

    OMP_NUM_THREADS=1 python scripts/export_fidelity.py
    python scripts/export_fidelity.py --checkpoint runs/adapt/atp/model.safetensors --data SYNTH/fog

Without ``--checkpoint`` each architecture is randomly initialised (seed 0) with its BatchNorm
statistics re-estimated on the frames: not a trained model (say so when quoting the figures), but
with activations and logits of a trained network's scale.
Without ``--data`` the frames are generated (``export.frames.synthetic_frames``), so no ΔmIoU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _write_frames(root: Path, imgsz, count: int) -> Path:
    import cv2

    from sfda_deploy.export.frames import synthetic_frames

    root.mkdir(parents=True, exist_ok=True)
    for frame in synthetic_frames(imgsz, count, seed=1):
        cv2.imwrite(str(root / f"{frame.name}.png"), frame.image[..., ::-1])
    return root


def _checkpoint(arch: str, imgsz, root: Path, frames_dir: Path) -> Path:
    """A random-init model whose BatchNorm statistics are re-estimated on the frames.

    With the default running stats (mean 0, var 1) a random 101-layer ResNet's activations grow to
    ~1e4 (fp16 overflows) and MobileNet's logits collapse to ~1e-6 (argmax is a coin toss): neither is
    what a trained network looks like. Re-estimated statistics give normalized activations and
    logits of order 1, like a trained model's, which is what a parity measurement needs.
    """
    import torch

    from sfda_deploy.checkpoint import save_checkpoint
    from sfda_deploy.export.frames import read_frames, stack
    from sfda_deploy.metadata import ModelMeta
    from sfda_deploy.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, num_classes=19)
    meta = ModelMeta(arch=arch, input_size=tuple(imgsz))
    images, _ = stack(read_frames(frames_dir, tuple(imgsz), 64, meta.classes))
    x = meta.normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over all batches
    model.train()
    with torch.no_grad():
        for batch in x.split(4):
            model(batch)
    model.eval()
    return save_checkpoint(root / arch / "model.safetensors", model, meta)


def _row(arch: str, kind: str, r: dict) -> str:
    diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
    miou = "-" if r["delta_miou"] is None else f"{r['delta_miou']:+.2f}"
    return f"| {arch} | {kind} | {r['argmax_agreement']:.4f} | {diff} | {miou} | {r['latency_ms_b']:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["mobilenetv2_aspp", "deeplabv2_r101"])
    parser.add_argument("--checkpoint", help="one trained checkpoint instead of random --archs")
    parser.add_argument("--imgsz", nargs=2, type=int, default=[128, 256])
    parser.add_argument("--data", help="frames (Cityscapes layout for ΔmIoU) for parity and calibration")
    parser.add_argument("--calib-count", type=int, default=32)
    parser.add_argument("--no-int8", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from sfda_deploy.config import ExportConfig
    from sfda_deploy.errors import SfdaError
    from sfda_deploy.export.api import run_export

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["SFDA_RUNS_DIR"] = str(tmp / "runs")
        frames = args.data or str(_write_frames(tmp / "frames", args.imgsz, args.calib_count))
        ckpts = [Path(args.checkpoint)] if args.checkpoint else [_checkpoint(a, args.imgsz, tmp, Path(frames))
                                                         for a in args.archs]
        rows = []
        for ckpt in ckpts:
            for precision in ("fp16", "int8"):
                if precision == "int8" and args.no_int8:
                    continue
                cfg = ExportConfig(checkpoint=str(ckpt), imgsz=tuple(args.imgsz), fp16=precision == "fp16",
                                   int8=precision == "int8", calib_data=frames, calib_count=args.calib_count,
                                   verify_data=frames)
                arch = ckpt.parent.name if not args.checkpoint else ckpt.name
                cfg = dataclasses.replace(cfg, name=f"{arch}-{precision}")
                try:
                    report = run_export(cfg)
                except SfdaError as e:  # a failed gate still wrote its figures to report.json
                    print(f"gate failed: {e}")
                    report = json.loads((tmp / "runs" / "export" / cfg.name / "report.json").read_text())
                    report.setdefault("int8_method", "gate failed")
                parity = report["parity"]
                if precision == "fp16":
                    rows.append(_row(arch, "ONNX fp32" + ("" if parity["onnx_fp32"]["argmax_agreement"] >= 99.99
                                                          else " (below the 99.99 % gate)"), parity["onnx_fp32"]))
                    if "onnx_fp16" in parity:
                        rows.append(_row(arch, "ONNX fp16", parity["onnx_fp16"]))
                elif "onnx_int8" in parity:
                    rows.append(_row(arch, f"ONNX int8 Q/DQ ({report['int8_method']})", parity["onnx_int8"]))
    print(f"\nfidelity vs torch fp32, ONNX Runtime CPU, {args.imgsz[0]}x{args.imgsz[1]}, "
          f"{'random init + BN stats' if not args.checkpoint else args.checkpoint}, frames: {args.data or 'generated'}")
    print("| model | file | argmax agreement % | max abs logit diff | ΔmIoU | ORT ms/img |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
