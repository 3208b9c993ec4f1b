"""ONNX Runtime sessions whose providers are verified, never assumed: the one place a session is made.

Below both ``adapt`` (a black-box ``.onnx`` source) and ``runtime`` (the ``onnxruntime`` backend, whose
``OrtBackend`` is ``runtime/ort.py``), so neither folder imports the other for it.

``onnxruntime-gpu`` silently falls back to CPU when CUDA cannot be loaded; ``create_session`` checks
``session.get_providers()`` and raises when a CUDA device was asked for explicitly but is not used.
The CPU (``onnxruntime``) and GPU (``onnxruntime-gpu``) packages are either/or: both install the same
``onnxruntime`` module, and the last one installed wins (usually without CUDAExecutionProvider), so
finding both is reported with the fix.

On a GPU, the TensorRT execution provider keeps its engines and timing cache next to the model
(``trt_cache_dir``), so a session reuses the engine instead of rebuilding it.
"""
from __future__ import annotations

import importlib.metadata
import re
import warnings
from pathlib import Path
from typing import Optional

from sfda_deploy.device import gpu_info, is_cuda
from sfda_deploy.errors import SfdaError
from sfda_deploy.state_dict import file_sha256
from sfda_deploy.threads import default_threads

ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu")
ONE_ORT_FIX = ("pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'sfda-deploy[gpu]' on a CUDA "
               "machine or 'sfda-deploy[cpu]' elsewhere (make install picks one)")


def installed_distributions(names) -> dict[str, str]:
    """{name: version} of the given distributions that are installed."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def both_runtimes_message(installed: dict[str, str]) -> Optional[str]:
    """The problem and fix when both ONNX Runtime packages are installed (None when at most one is)."""
    if not all(name in installed for name in ORT_PACKAGES):
        return None
    return (f"both onnxruntime {installed['onnxruntime']} (CPU) and onnxruntime-gpu {installed['onnxruntime-gpu']} "
            "are installed; they share one 'onnxruntime' module and the last installed wins, usually without "
            f"CUDAExecutionProvider: {ONE_ORT_FIX}")


def import_onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError:
        raise SfdaError("onnxruntime is not installed: pip install 'sfda-deploy[cpu]' (CPU) "
                        "or 'sfda-deploy[gpu]' (CUDA)") from None
    clash = both_runtimes_message(installed_distributions(ORT_PACKAGES))
    if clash:
        warnings.warn(clash, stacklevel=2)
    return ort


def requested_providers(device: str, available: list[str]) -> list[str]:
    """Providers to ask for, in order: TensorRT EP, CUDA, CPU on a CUDA device; CPU otherwise."""
    if is_cuda(device):
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        return [p for p in wanted if p in available]
    return ["CPUExecutionProvider"]


# ``--ort-opt``: ONNX Runtime graph optimisation levels. "all" (ONNX Runtime's default) adds the CPU's
# NCHWc blocked-layout transform on top of "extended" (node fusions). Neither wins everywhere on CPU:
# measured, 1 thread, AMD EPYC (Zen 3), seconds per frame all vs extended (docs/benchmark.md):
# mobilenetv2_aspp 0.14 vs 0.21 (256x512), 0.71 vs 0.85 (512x1024), 3.05-4.35 vs 3.37-4.24 (1024x2048): "all";
# deeplabv2_r101 15.2-15.8 vs 12.7-13.1 (512x1024), 75 vs 47 (1024x2048): "extended" for big dilated nets.
GRAPH_OPTIMIZATIONS = ("auto", "all", "extended", "basic")  # auto: ``choose_optimization``


def check_graph_optimization(level: str) -> str:
    """``level`` if ONNX Runtime has it (``GRAPH_OPTIMIZATIONS``); else a one-line SfdaError."""
    if level not in GRAPH_OPTIMIZATIONS:
        raise SfdaError(f"unknown --ort-opt '{level}': use one of {', '.join(GRAPH_OPTIMIZATIONS)}")
    return level


# ------------------------------------------------------------------- TensorRT provider caches
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-libs", "tensorrt-cu12-libs")


def trt_cache_dir(model: Path, tensorrt: str, gpu: str, capability: str, onnx_digest: str) -> Path:
    """Where the TensorRT provider keeps the engines and timing cache of ``model``: next to it, keyed as
    our own engines are (TensorRT version, GPU model, compute capability, ONNX content).

    Returns:
        ``<model dir>/<stem>.ort-trt/<gpu>-cc<capability>-trt<version>-<digest[:12]>``.
    """
    key = re.sub(r"[^a-z0-9.]+", "-", f"{gpu}-cc{capability}-trt{tensorrt}".lower()).strip("-")
    return model.parent / f"{model.stem}.ort-trt" / f"{key}-{onnx_digest[:12]}"


def trt_provider_options(cache: Path, device_index: int) -> dict:
    """TensorRT execution provider options: engine and timing caches in ``cache``, on GPU ``device_index``.
    Precision is the ONNX's own (fp16/INT8 files carry it), as for our engines."""
    return {"device_id": device_index, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}


def _trt_cache_for(path: Path, device: str) -> Optional[Path]:
    """The TensorRT provider's cache directory for ``path`` on ``device``, created (None if it cannot be)."""
    found = installed_distributions(TENSORRT_DISTRIBUTIONS)
    info = gpu_info(device)
    cache = trt_cache_dir(path, next(iter(found.values()), "system"), info["gpu"], info["compute_capability"],
                          file_sha256(path))
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only model directory: the provider then builds without caches
        return None
    return cache


def _provider_options(providers: list[str], path: Path, device: str) -> list[dict]:
    index = int(device.split(":")[1]) if ":" in device else 0
    options = []
    for p in providers:
        if p == "TensorrtExecutionProvider":
            cache = _trt_cache_for(path, f"cuda:{index}")
            options.append(trt_provider_options(cache, index) if cache else {"device_id": index})
        elif p == "CUDAExecutionProvider":
            options.append({"device_id": index})
        else:
            options.append({})
    return options


def create_session(path: Path | str, device: str = "cpu", threads: int | None = None, spinning: bool = False,
                   optimization: str = "all"):
    """A verified InferenceSession. Returns (session, providers actually used).

    Args:
        threads: intra-op threads (default: the cores this process may use, ``threads.default_threads``).
        spinning: let idle intra-op threads busy-wait for work (ONNX Runtime's default). Off here:
            busy-waiting threads take the cores the pipeline's decode/encode threads and other
            processes need (mobilenetv2_aspp 256x512, 2 threads on a shared 2-core box: 3.6 fps
            spinning vs 5.6 fps not; no difference at 1 thread, where there is no thread pool).
        optimization: "all", "extended" or "basic" (``GRAPH_OPTIMIZATIONS``; "auto" here is "all").

    Raises SfdaError when ``device`` is CUDA and the session ended on CPU only.
    """
    ort = import_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise SfdaError(f"ONNX file {path} does not exist: export one with 'sfda-deploy export CKPT'")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = default_threads(threads)
    level = check_graph_optimization(optimization)
    level = ("all" if level == "auto" else level).upper()  # all → ORT_ENABLE_ALL, ... (OrtBackend resolves auto)
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = requested_providers(device, ort.get_available_providers())
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers,
                                       provider_options=_provider_options(providers, path, device))
    except Exception as e:  # onnxruntime raises its own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SfdaError(f"ONNX Runtime cannot load {path} ({first[:200]}): re-export it with "
                        "'sfda-deploy export'") from None
    used = session.get_providers()
    if is_cuda(device) and "CUDAExecutionProvider" not in used and "TensorrtExecutionProvider" not in used:
        clash = both_runtimes_message(installed_distributions(ORT_PACKAGES))
        raise SfdaError(clash or (
            f"--device {device} was asked for but ONNX Runtime runs on {', '.join(used)} "
            f"(available: {', '.join(ort.get_available_providers())}): install 'sfda-deploy[gpu]' "
            "(onnxruntime-gpu, alone) with a matching CUDA, or use --device cpu"))
    return session, used
