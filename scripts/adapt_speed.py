"""Print ATP's training speed per stage: iterations/s, peak memory and (CUDA) the share of the GPU's peak.

Runs the real loop (``sfda_deploy.adapt.loop.run_stage``) on random images with randomly initialised
models, so it needs nothing but torch: no dataset, no TensorRT, no onnxruntime.

    python -m scripts.adapt_speed                      # CPU, small crops
    python -m scripts.adapt_speed --device cuda        # CUDA, AMP on/off, 640×640, batch 2

Per stage: ``warmup`` iterations are run first and not timed; then ``iters`` timed iterations (each
one is data + EMA update + step + backward + optimiser step, CUDA synchronised). FLOPs per iteration
come from ``torch.utils.flop_counter.FlopCounterMode`` over one step + backward (matmul/conv FLOPs,
2 per multiply-add); ``% of peak`` = FLOPs/iteration × it/s ÷ ``--peak-tflops``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from sfda_deploy.adapt import loop as L
from sfda_deploy.adapt import loop_state as LS
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.adapt.sampling import stream_loader
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model


class RandomImages(torch.utils.data.Dataset):
    """``n`` random uint8 RGB images ``[3,H,W]`` (speed does not depend on the content)."""

    def __init__(self, n: int, size: tuple[int, int]):
        g = torch.Generator().manual_seed(0)
        self.images = [torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8) for _ in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "name": f"rand{i}", "index": i}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(stage, device, marks: list, warmup: int):
    """The stage with a step that records a (synchronised) timestamp as each iteration starts.

    On CUDA the peak-memory counter restarts with the first timed iteration: the warm-up's cuDNN
    autotuning (``cudnn.benchmark``) tries workspace-hungry algorithms once, which is not the run's need.
    """
    real = stage.step

    def step(batch, student, teacher, state, cfg):
        _sync(device)
        marks.append(time.perf_counter())
        if len(marks) == warmup + 1 and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        return real(batch, student, teacher, state, cfg)

    return dataclasses.replace(stage, step=step)


@contextlib.contextmanager
def _profiler(device, on: bool):
    if not on:
        yield None
        return
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        yield prof


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """2·MACs of each gradient a convolution's backward computes (input and/or weight).

    Each costs as much as the forward, ``2 · numel(grad_out) · (C_in/groups) · k_h · k_w``.
    torch's own formula ignores ``groups`` in the backward (it counts a depthwise conv's backward
    as a dense one: ×65 on a 64-channel depthwise layer), so MobileNet figures need this one.
    """
    output_mask = args[-1] if args else kwargs.get("output_mask", (True, True, False))
    forward = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _flops_per_iteration(job, stage_index, st) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    stage, cfg = job.stages[stage_index], LS.stage_cfg(job, job.stages[stage_index])
    subsets = LS.stream_subsets(stage, st.state.store, len(job.train_set))
    batch = {s: L._to_device(next(iter(stream_loader(job.train_set, sub, start=0, stop=1, batch=cfg.batch,
                                                     crop=cfg.crop, flip=0.0, seed=0, stream=s,
                                                     keep_labels=False, workers=0))), job.device,
                             job.device.type == "cuda")
             for s, sub in subsets.items()}
    st.state.iteration = cfg.iters  # past contrast_start: P's full cost
    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})
    with counter:
        with LS.autocast(job):
            losses = stage.step(batch, job.student, st.teacher, st.state, cfg)
        sum(v.float() for v in losses.values()).backward()
    job.student.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure(arch: str, device: torch.device, crop: tuple[int, int], batch: int, amp: bool, warmup: int, iters: int,
            stages: str, peak_tflops: float | None, profile: bool = False) -> list[dict]:
    """One row per stage: it/s, peak memory (GiB), FLOPs per iteration and share of peak.

    ``profile``: the stage runs under ``torch.profiler`` (its it/s then include the profiler's overhead) and
    the row's ``profile`` holds the top operators by device (or CPU) time, as text.
    """
    method = get_method("atp")
    total = warmup + iters
    # contrast from the first timed iteration, no Cityscapes border rows, no checkpoints/previews
    cfg = method.make_config({"checkpoint_every": 0, "preview_every": 0, "contrast_start": warmup,
                              "ignore_top": 0, "ignore_bottom": 0}, iters=total, batch=batch, crop=crop)
    torch.manual_seed(0)
    model = build_model(arch, num_classes=19).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    meta = ModelMeta(arch=arch, input_size=crop)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        job = LS.LoopJob(method=method, cfg=cfg, stages=method.select(stages), student=model, meta=meta,
                        train_set=RandomImages(10, crop), run_dir=Path(tmp), device=device, amp=amp, progress=False)
        for i, stage in enumerate(job.stages):
            marks: list[float] = []
            job.stages = job.stages[:i] + (_timed(stage, device, marks, warmup),) + job.stages[i + 1:]
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            st = LS.setup_stage(job, job.stages[i], i, None)
            with _profiler(device, profile) as prof:
                L.run_stage(job, i, 0, st, [], {})
                _sync(device)
            end = time.perf_counter()
            it_s = iters / (end - marks[warmup])
            if device.type == "cuda":
                mem = torch.cuda.max_memory_allocated(device) / 2 ** 30
            else:  # process high-water mark (monotonic over the run), kB on Linux
                mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
            flops = _flops_per_iteration(job, i, st)
            share = flops * it_s / (peak_tflops * 1e12) if peak_tflops else None
            rows.append({"arch": arch, "stage": stage.name, "amp": amp if device.type == "cuda" else "-",
                         "it_s": it_s, "mem_gib": mem, "gflops": flops / 1e9, "share": share})
            if prof is not None:
                key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
                rows[-1]["profile"] = prof.key_averages().table(sort_by=key, row_limit=25)
            job.stages = job.stages[:i] + (stage,) + job.stages[i + 1:]
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--archs", default="mobilenetv2_aspp,deeplabv2_r101")
    p.add_argument("--stages", default="A,T,P")
    p.add_argument("--crop", type=int, nargs=2, default=None, help="default: 128 128 on CPU, 640 640 on CUDA")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations per stage (CPU 1, CUDA 5)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per stage (CPU 3, CUDA 20)")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="dense bf16 peak of the GPU (H100 SXM: 989; H200: 989; A100: 312)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no GPU: use --device cpu")
    torch.set_num_threads(args.threads)
    crop = tuple(args.crop) if args.crop else ((640, 640) if cuda else (128, 128))
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    iters = args.iters if args.iters is not None else (20 if cuda else 3)
    if cuda:
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, crop {crop}, "
              f"batch {args.batch}, peak {args.peak_tflops} TFLOP/s")
    else:
        print(f"device: cpu ({args.threads} thread(s)), torch {torch.__version__}, crop {crop}, batch {args.batch}")
    print(f"{'arch':<18} {'stage':<5} {'amp':<5} {'it/s':>8} {'peak GiB':>9} {'GFLOP/it':>9} {'% peak':>7}")
    for arch in args.archs.split(","):
        for amp in ((True, False) if cuda else (False,)):
            for r in measure(arch, device, crop, args.batch, amp, warmup, iters, args.stages,
                             args.peak_tflops if cuda else None):
                share = f"{100 * r['share']:.1f}" if r["share"] is not None else "-"
                print(f"{r['arch']:<18} {r['stage']:<5} {str(r['amp']):<5} {r['it_s']:>8.3f} {r['mem_gib']:>9.2f} "
                      f"{r['gflops']:>9.1f} {share:>7}", flush=True)
    if not cuda:
        print("peak GiB on CPU is the process's resident high-water mark so far (monotonic across rows)")


if __name__ == "__main__":
    main()
