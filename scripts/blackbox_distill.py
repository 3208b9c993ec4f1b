"""Stage D on the tiny model: a labelled tiny source → ONNX → students distilled at several temperatures.

Prints one table row per temperature: the student's pixel agreement with the ONNX teacher and its
mIoU on the target images, next to the teacher's own mIoU (the student's ceiling: it never sees a
label). The data are the test suite's colour-band images (``tests/tiny_data.py``) with a colour
shift between source and target; this checks the recipe's mechanics, not real-domain quality.

    OMP_NUM_THREADS=1 python -m scripts.blackbox_distill [--iters 300] [--temps 1,2,4]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sfda_deploy.adapt.blackbox import BlackBoxTeacher, teacher_agreement
from sfda_deploy.adapt.loop import run
from sfda_deploy.adapt.loop_state import LoopJob
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.adapt.methods.distill import distill_stage
from sfda_deploy.data.bands import TinyDataset
from sfda_deploy.evaluate import evaluate_model
from sfda_deploy.metadata import ModelMeta, attach_to_onnx
from sfda_deploy.models import build_model
from sfda_deploy.runs import new_run_dir

SIZE = (48, 64)


def train_source(meta: ModelMeta, iters: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=19)
    data = TinyDataset(n=16, size=SIZE, seed=0)
    x = meta.normalize(torch.stack([d["image"] for d in data.items]).float())
    y = torch.stack([d["label"] for d in data.items])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(iters):
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def export(model, meta: ModelMeta, path: Path) -> Path:
    axes = {n: {0: "batch", 2: "height", 3: "width"} for n in ("image", "logits")}
    torch.onnx.export(model, (torch.zeros(1, 3, *SIZE),), str(path), input_names=["image"],
                      output_names=["logits"], dynamic_axes=axes, dynamo=False, opset_version=18)
    proto = onnx.load(str(path))
    attach_to_onnx(proto, meta)
    onnx.save(proto, str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300, help="stage D iterations per temperature")
    ap.add_argument("--temps", default="1,2,4")
    ap.add_argument("--style", type=float, default=0.3, help="colour shift of the target images")
    args = ap.parse_args()
    torch.set_num_threads(1)
    meta = ModelMeta(arch="tiny", input_size=SIZE)
    source = train_source(meta, 150)
    target = TinyDataset(n=16, size=SIZE, seed=1, labelled=False, style=args.style)
    labelled = TinyDataset(n=16, size=SIZE, seed=1, style=args.style)
    loader = DataLoader(labelled, batch_size=4)
    path = export(source, meta, Path(tempfile.mkdtemp()) / "source.onnx")
    teacher = BlackBoxTeacher.open(path)
    print(f"teacher (ONNX) mIoU on the target: {evaluate_model(source, meta, loader, progress=False)['miou']:.2f}")
    print(f"{'T':>4} {'agree before':>12} {'agree after':>12} {'student mIoU':>12}")
    for temp in (float(t) for t in args.temps.split(",")):
        cfg = get_method("distill").make_config({"temperature": temp, "checkpoint_every": 0},
                                                iters=args.iters, batch=4, crop=(32, 32), lr=1e-2)
        torch.manual_seed(0)
        student = build_model("tiny", num_classes=19)
        before = teacher_agreement(student, meta, teacher, target, "cpu")
        stage = distill_stage(teacher, cfg)
        job = LoopJob(method=get_method("distill"), cfg=cfg, stages=(stage,), student=student, meta=meta,
                      train_set=target, run_dir=new_run_dir("blackbox-bench", f"T{temp:g}"),
                      device=torch.device("cpu"), progress=False)
        run(job)
        after = teacher_agreement(student, meta, teacher, target, "cpu")
        miou = evaluate_model(student, meta, loader, progress=False)["miou"]
        print(f"{temp:>4g} {before:>12.3f} {after:>12.3f} {miou:>12.2f}")


if __name__ == "__main__":
    main()
