"""Estimate the GPU memory of one adapt step of a transformer model from a CPU trace (no GPU needed).

    OMP_NUM_THREADS=2 python -m scripts.transformer_memory [--arch daformer_mitb5]
        [--crop 640 640] [--batch 2] [--target-gb 20]

The step is ATP's stage T, the adapt loop's heaviest single-forward step: the EMA teacher predicts the
batch without gradients, the student (bf16 autocast) predicts a strongly augmented copy, cross-entropy,
backward, AdamW. Its peak is counted from parts, each measured or counted here:

- weights: the student's parameters and buffers (fp32), the EMA teacher (a full fp32 copy), the
  gradients (fp32, one per trained parameter) and AdamW's two moments (fp32);
- activations: every tensor autograd saves for the backward during the student's forward and the
  loss, traced with ``torch.autograd.graph.saved_tensors_hooks`` under CPU bf16 autocast (the dtype
  rules are the device-independent autocast lists), unique storages, parameters left out (they are
  counted above); the bf16 weight copies autocast makes are saved tensors and are counted. The trace
  runs under ``FakeTensorMode`` (no arithmetic); ``--check-real H W`` also traces a real forward at a
  small size and prints both counts (tests/test_mit_memory.py checks they agree);
- backward working set: the largest saved tensor twice (its gradient and one temporary);
- the teacher's logits kept through the step, and the batch itself.

What this leaves out: the CUDA context (~0.5 GB, outside torch's allocator), allocator fragmentation,
and kernels' workspaces. On CPU, attention runs the math path, which saves the attention weights; the
fused GPU kernels do not, so the activations here are an upper bound on that count.
``scripts/gpu_check.py`` measures the same step on a GPU (``torch.cuda.max_memory_allocated``).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from sfda_deploy.models import build_model

GB = 1e9


def tensor_bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def saved_activation_bytes(model: torch.nn.Module, batch: int, crop: tuple[int, int], classes: int,
                           dtype: torch.dtype | None = torch.bfloat16, fake: bool = True) -> tuple[int, int]:
    """Bytes autograd saves for the backward of ``cross_entropy(model(x), labels)`` (unique storages, the
    model's own parameters excluded) and the largest single saved tensor, under CPU autocast to ``dtype``
    (None: fp32).

    ``fake``: run under ``FakeTensorMode`` (shapes, dtypes and autograd without arithmetic: seconds for
    MiT-B5 at 640x640, where a real bf16 trace on a CPU without bf16 units takes hours); ``fake=False`` runs
    it for real (the check that both count the same).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if fake:
        tensors = {k: mode.from_tensor(v).requires_grad_(v.requires_grad) for k, v in tensors.items()}
    own = {tensors[k].untyped_storage()._cdata for k, _ in model.named_parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        key = t.untyped_storage()._cdata
        if key not in own:
            seen[key] = max(seen.get(key, 0), tensor_bytes(t))
        return t

    with mode:
        generator = None if fake else torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, *crop, generator=generator)
        labels = torch.randint(0, classes, (batch, *crop), generator=generator)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = torch.func.functional_call(model, tensors, (x,))
            F.cross_entropy(logits.float(), labels, ignore_index=255)
    return sum(seen.values()), max(seen.values(), default=0)


def estimate(arch: str, crop: tuple[int, int], batch: int, classes: int = 19) -> dict[str, float]:
    """The parts of the step's peak in GB (1e9 bytes), and the trace's wall time."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=classes).train()
    weights = sum(tensor_bytes(p) for p in model.parameters())
    buffers = sum(tensor_bytes(b) for b in model.buffers())
    start = time.perf_counter()
    activations, largest = saved_activation_bytes(model, batch, crop, classes)
    parts = {
        "student weights + buffers (fp32)": weights + buffers,
        "EMA teacher (fp32 copy)": weights + buffers,
        "gradients (fp32)": weights,
        "AdamW moments (2 x fp32)": 2 * weights,
        "saved activations (bf16 autocast)": activations,
        "backward working set (2 x largest saved)": 2 * largest,
        "teacher logits + batch + labels": batch * crop[0] * crop[1] * (classes * 4 + 3 * 4 + 8),
    }
    out = {k: v / GB for k, v in parts.items()}
    out["_trace_s"] = time.perf_counter() - start
    out["_params_m"] = weights / 4 / 1e6
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="daformer_mitb5")
    parser.add_argument("--crop", nargs=2, type=int, default=(640, 640))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--target-gb", type=float, default=20.0)
    parser.add_argument("--check-real", nargs=2, type=int, metavar=("H", "W"),
                        help="also trace a real (computed) fp32 forward at this size and print both counts")
    args = parser.parse_args(argv)
    if args.check_real:
        torch.manual_seed(0)
        model = build_model(args.arch, num_classes=19).train()
        crop = tuple(args.check_real)
        real, fake = (saved_activation_bytes(model, args.batch, crop, 19, None, fake=f)[0] for f in (False, True))
        print(f"saved activations at {crop[0]}x{crop[1]} fp32: real trace {real / 1e6:.2f} MB, fake trace "
              f"{fake / 1e6:.2f} MB")
    parts = estimate(args.arch, tuple(args.crop), args.batch)
    trace_s, params_m = parts.pop("_trace_s"), parts.pop("_params_m")
    print(f"{args.arch} ({params_m:.1f} M parameters), adapt step (ATP stage T) at "
          f"{args.crop[0]}x{args.crop[1]}, batch {args.batch}, bf16 autocast; CPU trace {trace_s:.0f} s")
    width = max(map(len, parts))
    for name, gb in parts.items():
        print(f"  {name:<{width}}  {gb:6.2f} GB")
    total = sum(parts.values())
    verdict = "within" if total <= args.target_gb else "OVER"
    print(f"  {'estimated peak (torch allocator)':<{width}}  {total:6.2f} GB: {verdict} the {args.target_gb:g} GB "
          "target (+ ~0.5 GB CUDA context outside the allocator)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
