"""One run, one table: the GPU paths of sfda-deploy on the first GPU at hand (under 5 minutes on an H100).

    python -m scripts.gpu_check [--out docs/gpu_check.md]

Rows (each is measured here; a row that fails says why, the others still run):
  amp choice      the autocast dtype ``adapt`` picks on this GPU (native bf16 and capability >= 8.0)
  adapt           ATP's T stage (the real loop) on DeepLabV2-R101, 640x640, batch 2: fp32, bf16 and fp16
                  autocast (fp16 with GradScaler): it/s, peak memory, share of the GPU's dense bf16 peak
  transformer     ATP's T stage on DAFormer MiT-B5, 640x640, batch 2, bf16: it/s and peak memory against
  adapt           the 20 GB target (scripts/transformer_memory.py estimates it from a CPU trace)
  torch backend   DeepLabV2-R101 at 1024x2048 (fp16, channels_last), with and without CUDA graphs: fps
  torchrun        ``torchrun --nproc_per_node=1`` with NCCL: rank on its own cuda:LOCAL_RANK, all-reduce,
                  and an fp16 step with an overflowing gradient skipped (scale halved)
  fp32 reference  the export parity reference (TF32 off) on CUDA vs CPU fp32: argmax agreement and
                  max |dlogit|, next to torch's default (TF32 on) for contrast
  tensorrt        (when ``tensorrt`` imports) engines of the bundled model: fp32 parity and fps, the
                  uint8 mask graph, a --dynamic engine's activation memory per bound shape
  onnxruntime     (when CUDAExecutionProvider is there) I/O binding vs host copies fps; the TensorRT
                  provider's second session (engine cache reused) vs its first

Without a CUDA GPU it prints one line saying so and exits with status 2 (nothing is run).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BF16_PEAK_TFLOPS = {"H200": 989, "H100 PCIe": 756, "H100": 989, "GH200": 989, "B200": 2250, "A100": 312,
                    "L40S": 362, "L4": 121, "A10": 125, "RTX 4090": 165, "A6000": 155}


def peak_tflops(gpu: str):
    """Dense bf16 TFLOP/s of a GPU by name (longest matching key), None when unknown."""
    keys = [k for k in BF16_PEAK_TFLOPS if k in gpu]
    return BF16_PEAK_TFLOPS[max(keys, key=len)] if keys else None


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, check: str, setting: str, result: str) -> None:
        self.rows.append((check, setting, result))
        print(f"  {check}: {setting}: {result}", flush=True)

    def run(self, check: str, fn, *args) -> None:
        """``fn(table, *args)``; an exception becomes a FAILED row instead of ending the run."""
        try:
            fn(self, *args)
        except Exception as e:  # a check script reports every failure and goes on
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            self.add(check, "FAILED", f"{type(e).__name__}: {first}")

    def markdown(self) -> str:
        lines = ["| check | setting | result |", "| --- | --- | --- |"]
        return "\n".join(lines + [f"| {c} | {s} | {r} |" for c, s, r in self.rows])


# ----------------------------------------------------------------------------------- torch only
def check_amp_and_adapt(table: Table, device, profile_dir=None) -> None:
    import torch

    from scripts.adapt_speed import measure
    from sfda_deploy.adapt import amp

    cc = torch.cuda.get_device_capability(device)
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    table.add("amp choice", f"cc {cc[0]}.{cc[1]}, native bf16 {native}", str(amp.device_amp_dtype(device)))
    peak = peak_tflops(torch.cuda.get_device_name(device))
    real = amp.device_amp_dtype
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16+scaler", torch.float16)):
        amp.device_amp_dtype = lambda _d, dtype=dtype: dtype  # force each dtype (the loop asks amp)
        try:
            (r,) = measure("deeplabv2_r101", device, (640, 640), 2, dtype is not None, 3, 10, "T", peak)
            if profile_dir is not None:  # a second, profiled run: where the time goes (the row keeps the clean one)
                (prof,) = measure("deeplabv2_r101", device, (640, 640), 2, dtype is not None, 3, 10, "T", peak,
                                  profile=True)
                (profile_dir / f"adapt_profile_{label.split('+')[0]}.txt").write_text(prof["profile"])
        finally:
            amp.device_amp_dtype = real
        share = f", {100 * r['share']:.1f}% of bf16 peak" if r["share"] is not None else ", peak unknown"
        table.add("adapt T (R101 640x640 b2)", label, f"{r['it_s']:.2f} it/s, {r['mem_gib']:.1f} GiB{share}")


def transformer_adapt_row(device, arch: str = "daformer_mitb5", crop=(640, 640), batch: int = 2, warmup: int = 2,
                          iters: int = 5, target_gb: float = 20.0) -> str:
    """ATP's T stage of ``arch`` in bf16 autocast (on CUDA): it/s and peak allocated memory against the target
    that ``scripts/transformer_memory.py`` estimates from a CPU trace."""
    import torch

    from scripts.adapt_speed import measure
    from sfda_deploy.adapt import amp

    real = amp.device_amp_dtype
    amp.device_amp_dtype = lambda _d: torch.bfloat16
    try:
        peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        (r,) = measure(arch, device, tuple(crop), batch, device.type == "cuda", warmup, iters, "T", peak)
    finally:
        amp.device_amp_dtype = real
    gb = r["mem_gib"] * 2 ** 30 / 1e9
    return f"{r['it_s']:.2f} it/s, {gb:.1f} GB peak ({'within' if gb <= target_gb else 'OVER'} the {target_gb:g} GB target)"


def check_transformer_adapt(table: Table, device) -> None:
    table.add("adapt T (DAFormer MiT-B5 640x640 b2)", "bf16", transformer_adapt_row(device))


def check_torch_backend(table: Table, device) -> None:
    import numpy as np
    import torch

    from sfda_deploy.metadata import ModelMeta
    from sfda_deploy.models import build_model
    from sfda_deploy.runtime.torch_backend import TorchBackend

    frames = np.random.default_rng(0).integers(0, 256, (1, 1024, 2048, 3), dtype=np.uint8)
    for graphs in (False, True):
        torch.manual_seed(0)
        backend = TorchBackend(build_model("deeplabv2_r101", num_classes=19), ModelMeta(arch="deeplabv2_r101",
                               input_size=(1024, 2048)), device, cuda_graphs=graphs)
        x = backend.preprocess(frames)
        for _ in range(3):
            backend.infer(x)
        start, n = time.perf_counter(), 20
        for _ in range(n):
            backend.infer(x)
        fps = n / (time.perf_counter() - start)
        note = f" ({'; '.join(backend.notes)})" if backend.notes else ""
        table.add("torch backend (R101 1024x2048)", f"CUDA graphs {'on' if graphs else 'off'}",
                  f"{fps:.1f} fps{note}")
        backend.close()


def ddp_child() -> None:
    """Under torchrun: join NCCL on cuda:LOCAL_RANK, all-reduce, one fp16 step with an inf gradient."""
    import torch
    import torch.distributed as dist

    from sfda_deploy.adapt import amp
    from sfda_deploy.adapt import distributed as D

    local = int(os.environ.get("LOCAL_RANK", "0"))
    D.join_group("cuda", local)  # what D.init does for every rank when torchrun starts several
    rank = dist.get_rank()
    t = torch.ones(1, device="cuda") * (rank + 1)
    dist.all_reduce(t)
    w = torch.nn.Parameter(torch.ones(2, device="cuda"))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cuda", init_scale=4.0)
    amp.apply_gradients((w * torch.tensor([float("inf"), 1.0], device="cuda")).sum(), opt, scaler, [w])
    skipped = bool(torch.equal(w.detach(), torch.ones(2, device="cuda")))
    print(f"RESULT backend={dist.get_backend()} device=cuda:{torch.cuda.current_device()} local={local} "
          f"allreduce={t.item():g} fp16-overflow-skipped={skipped} scale={scaler.get_scale():g}", flush=True)
    dist.destroy_process_group()


def check_torchrun(table: Table, device) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone",
           str(Path(__file__).resolve()), "--ddp-child"]
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT")), None)
    if r.returncode or line is None:
        raise RuntimeError(f"torchrun exited {r.returncode}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    table.add("torchrun 1 rank", "NCCL", f"{line[7:]} ({time.perf_counter() - start:.0f} s)")


def check_reference(table: Table, device) -> None:
    from sfda_deploy.assets import BUNDLED_MODEL
    from sfda_deploy.checkpoint import load_model
    from sfda_deploy.data.frames import stack, synthetic_frames
    from sfda_deploy.export.verify import Fidelity, torch_runner

    images, _ = stack(synthetic_frames((512, 1024), 2))
    model, meta = load_model(BUNDLED_MODEL, "cpu")
    cpu = torch_runner(model, meta, BUNDLED_MODEL, "cpu", (512, 1024)).run(images)
    gpu_model, _ = load_model(BUNDLED_MODEL, device)
    for tf32 in (False, True):
        runner = torch_runner(gpu_model, meta, BUNDLED_MODEL, str(device), (512, 1024))
        runner.backend.tf32 = tf32
        fid = Fidelity(meta.num_classes)
        fid.update(cpu, runner.run(images))
        r = fid.result(meta.classes.names)
        label = "TF32 on (torch default)" if tf32 else "TF32 off (the parity reference)"
        table.add("fp32 reference vs CPU", label,
                  f"agreement {r['argmax_agreement']:.4f}%, max abs dlogit {r['max_abs_diff']:.2e}")


# ----------------------------------------------------------------------------- optional stacks
def _export_bundled(tmp: Path, output: str, dynamic: bool, mask_dtype: str = "int32") -> Path:
    from sfda_deploy.assets import BUNDLED_MODEL
    from sfda_deploy.checkpoint import load_model
    from sfda_deploy.commands.export import export_meta
    from sfda_deploy.config import ExportConfig
    from sfda_deploy.export.onnx import export_module, save_onnx

    model, meta = load_model(BUNDLED_MODEL, "cpu")
    cfg = ExportConfig(output=output, dynamic=dynamic, batch=1, opset=18, mask_dtype=mask_dtype)
    path = tmp / f"{output}_{mask_dtype}_{'dyn' if dynamic else 'static'}.onnx"
    save_onnx(export_module(model, (512, 1024), 2 if dynamic else 1, dynamic, 18, output, mask_dtype),
              export_meta(meta, cfg, (512, 1024), "fp32", model.output_stride), path)
    return path


def _engine(tmp: Path, onnx_path: Path, device, dynamic: bool) -> Path:
    from sfda_deploy.export.export_settings import ExportSettings
    from sfda_deploy.export.tensorrt import build_engine
    from sfda_deploy.runtime.engine_file import write_engine

    settings = ExportSettings(device=str(device), batch=1, dynamic=dynamic, workspace=4.0,
                              max_batch=2 if dynamic else None, max_imgsz=(512, 1024) if dynamic else None)
    plan, sidecar = build_engine(onnx_path, settings, (256, 512) if dynamic else (512, 1024))
    path = onnx_path.with_suffix(".engine")
    write_engine(path, plan, sidecar)
    return path


def check_tensorrt(table: Table, device, tmp: Path) -> None:
    from sfda_deploy.assets import BUNDLED_MODEL
    from sfda_deploy.data.frames import stack, synthetic_frames
    from sfda_deploy.export.verify import compare_runners, open_runner
    from sfda_deploy.runtime.engine import TensorRTBackend

    images, _ = stack(synthetic_frames((512, 1024), 4))
    fp32 = _engine(tmp, _export_bundled(tmp, "logits", False), device, False)
    ref = open_runner(BUNDLED_MODEL, str(device), (512, 1024))  # the export's reference: TF32 off
    r = compare_runners(ref, open_runner(fp32, str(device)), images, None)
    table.add("tensorrt fp32 engine", "parity vs TF32-off torch", f"agreement {r['argmax_agreement']:.4f}%, "
              f"{1000 / r['latency_ms_b']:.0f} fps incl. host copy")
    mask = _engine(tmp, _export_bundled(tmp, "mask", False, "uint8"), device, False)
    backend = TensorRTBackend(mask, str(device), None, 1)
    labels = backend.infer(backend.preprocess(images[:1]))
    table.add("tensorrt uint8 mask", f"output {backend.output_dtype}", f"built and ran, labels {labels.dtype} "
              f"{tuple(labels.shape)}, max id {int(labels.max())}")
    dyn = TensorRTBackend(_engine(tmp, _export_bundled(tmp, "logits", True), device, True), str(device), None, 1)
    sizes = {}
    for shape in ((1, 3, 256, 512), (2, 3, 512, 1024)):
        dyn._bind(shape, dynamic=True)
        sizes[shape] = dyn._workspace.numel() if dyn._workspace is not None else None
    table.add("tensorrt --dynamic", "activation memory per bound shape",
              ", ".join(f"{s[0]}x{s[2]}x{s[3]}: {v / 2**20:.1f} MiB" if v else f"{s}: TensorRT-managed"
                        for s, v in sizes.items()))


def check_onnxruntime(table: Table, device, tmp: Path) -> None:
    import onnxruntime as ort

    from sfda_deploy.data.frames import stack, synthetic_frames
    from sfda_deploy.runtime.ort import OrtBackend

    images, _ = stack(synthetic_frames((512, 1024), 1))
    onnx_path = tmp / "logits_int32_static.onnx"
    if not onnx_path.is_file():
        onnx_path = _export_bundled(tmp, "logits", False)
    for binding in (False, True):
        backend = OrtBackend(onnx_path, str(device), None, 1, io_binding=binding)
        x = backend.preprocess(images)
        backend.infer(x)
        start, n = time.perf_counter(), 20
        for _ in range(n):
            backend.infer(backend.preprocess(images))
        table.add("onnxruntime", f"{backend.providers[0]}, I/O binding {'on' if binding else 'off'}",
                  f"{n / (time.perf_counter() - start):.1f} fps (preprocess + infer)")
    if "TensorrtExecutionProvider" in ort.get_available_providers():
        times = []
        for _ in range(2):
            start = time.perf_counter()
            OrtBackend(onnx_path, str(device), None, 1).close()
            times.append(time.perf_counter() - start)
        table.add("onnxruntime TensorRT EP", "session open: first, second (cached engine)",
                  f"{times[0]:.1f} s, {times[1]:.1f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Check sfda-deploy's GPU paths in one run and print one table.")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    p.add_argument("--profile", type=Path, help="also profile the adapt rows (torch.profiler): top operators "
                   "per dtype written to this folder as adapt_profile_<dtype>.txt")
    p.add_argument("--ddp-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    if args.ddp_child:
        ddp_child()
        return 0
    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU visible to torch {torch.__version__} (CUDA build: "
              f"{torch.version.cuda or 'none'}): nothing was run; run it on a machine with an NVIDIA GPU "
              "(README, 'Install')", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    print(f"gpu_check on {torch.cuda.get_device_name(device)}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    table, start = Table(), time.perf_counter()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    table.run("amp/adapt", check_amp_and_adapt, device, args.profile)
    table.run("transformer adapt", check_transformer_adapt, device)
    table.run("torch backend", check_torch_backend, device)
    table.run("torchrun", check_torchrun, device)
    table.run("fp32 reference", check_reference, device)
    with tempfile.TemporaryDirectory() as tmp:
        import importlib.util

        if importlib.util.find_spec("tensorrt") is not None:
            table.run("tensorrt", check_tensorrt, device, Path(tmp))
        else:
            table.add("tensorrt", "not installed", "skipped")
        try:
            import onnxruntime as ort

            cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
        except ImportError:
            cuda_ep = False
        if cuda_ep:
            table.run("onnxruntime", check_onnxruntime, device, Path(tmp))
        else:
            table.add("onnxruntime", "no CUDAExecutionProvider", "skipped")
    table.add("total", "wall time", f"{time.perf_counter() - start:.0f} s")
    text = table.markdown()
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
