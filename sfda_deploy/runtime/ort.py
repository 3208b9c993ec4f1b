"""ONNX Runtime sessions whose providers are verified, never assumed.

``onnxruntime-gpu`` silently falls back to CPU when CUDA cannot be loaded; ``create_session`` checks
``session.get_providers()`` and raises when a CUDA device was asked for explicitly but is not used.
"""
from __future__ import annotations

import os
from pathlib import Path

from sfda_deploy.errors import SfdaError


def import_onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError:
        raise SfdaError("onnxruntime is not installed: pip install 'sfda-deploy' (CPU) "
                        "or 'sfda-deploy[gpu]' (CUDA)") from None
    return ort


def requested_providers(device: str, available: list[str]) -> list[str]:
    """Providers to ask for, in order: TensorRT EP, CUDA, CPU on a CUDA device; CPU otherwise."""
    if device.startswith("cuda"):
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        return [p for p in wanted if p in available]
    return ["CPUExecutionProvider"]


# ``--ort-opt``: ONNX Runtime graph optimisation levels. "all" (ONNX Runtime's default) adds the CPU's
# NCHWc blocked-layout transform on top of "extended" (node fusions). Neither wins everywhere on CPU:
# measured, 1 thread, AMD EPYC (Zen 3), seconds per frame all vs extended (docs/benchmark.md):
# mobilenetv2_aspp 0.14 vs 0.21 (256x512), 0.71 vs 0.85 (512x1024), 3.05-4.35 vs 3.37-4.24 (1024x2048): "all";
# deeplabv2_r101 15.2-15.8 vs 12.7-13.1 (512x1024), 75 vs 47 (1024x2048): "extended" for big dilated nets.
GRAPH_OPTIMIZATIONS = ("all", "extended", "basic")


def check_graph_optimization(level: str) -> str:
    """``level`` if ONNX Runtime has it (``GRAPH_OPTIMIZATIONS``); else a one-line SfdaError."""
    if level not in GRAPH_OPTIMIZATIONS:
        raise SfdaError(f"unknown --ort-opt '{level}': use one of {', '.join(GRAPH_OPTIMIZATIONS)}")
    return level


def create_session(path: Path | str, device: str = "cpu", threads: int | None = None, spinning: bool = False,
                   optimization: str = "all"):
    """A verified InferenceSession. Returns (session, providers actually used).

    Args:
        threads: intra-op threads (default: all cores).
        spinning: let idle intra-op threads busy-wait for work (ONNX Runtime's default). Off here:
            busy-waiting threads take the cores the pipeline's decode/encode threads and other
            processes need (mobilenetv2_aspp 256x512, 2 threads on a shared 2-core box: 3.6 fps
            spinning vs 5.6 fps not; no difference at 1 thread, where there is no thread pool).
        optimization: "all", "extended" or "basic" (``GRAPH_OPTIMIZATIONS``).

    Raises SfdaError when ``device`` is CUDA and the session ended on CPU only.
    """
    ort = import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise SfdaError(f"ONNX file {path} does not exist: export one with 'sfda-deploy export CKPT'")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
    level = check_graph_optimization(optimization).upper()  # all → ORT_ENABLE_ALL, ...
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = requested_providers(device, ort.get_available_providers())
    provider_options = []
    for p in providers:
        if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and ":" in device:
            provider_options.append({"device_id": int(device.split(":")[1])})
        else:
            provider_options.append({})
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers,
                                       provider_options=provider_options)
    except Exception as e:  # onnxruntime raises its own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SfdaError(f"ONNX Runtime cannot load {path} ({first[:200]}): re-export it with "
                        "'sfda-deploy export'") from None
    used = session.get_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" not in used and "TensorrtExecutionProvider" not in used:
        raise SfdaError(
            f"--device {device} was asked for but ONNX Runtime runs on {', '.join(used)} "
            f"(available: {', '.join(ort.get_available_providers())}): install 'sfda-deploy[gpu]' "
            "(onnxruntime-gpu) with a matching CUDA, or use --device cpu"
        )
    return session, used
