"""ONNX → TensorRT engine (TensorRT 10.x and 11.x), with a sidecar JSON cache key: the builder side.

Precision lives in the ONNX, not in builder flags. TensorRT 11 removed the weak-typing flags
(``BuilderFlag.FP16``/``INT8``) and the implicit INT8 calibrators; every network there is strongly
typed. So one path serves both major versions: the engine is built from the ONNX that already
carries its precision (fp32, the fp16 ONNX, or the INT8 Q/DQ ONNX calibrated on target frames) with
a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: needed on 10.x to keep
the ONNX's types, accepted and ignored on 11.x). Nothing version-specific is set beyond that flag.

The engine is a plain ``.engine`` file (trtexec and any TensorRT runtime load it); its metadata and
cache key (TensorRT version, GPU name, compute capability, shapes, precision, ONNX sha256) go in the
sidecar ``<engine>.json`` (docs/contracts.md), so a stale engine is refused with a clear fix.

The file format (sidecar, build key, ``write_engine``) is ``sfda_deploy.runtime.engine_file``; loading and
running engines (and the guarded import: ``tensorrt`` only after a CUDA GPU was found, since TensorRT
objects created without one can crash the process) live in ``sfda_deploy.runtime.engine``; this module
only builds. The builder functions take the module as an
argument, so the test suite drives them with TensorRT for RTX (``tensorrt_rtx``), whose Builder and
OnnxParser run on CPU.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from sfda_deploy.device import device_name, gpu_info, is_cuda
from sfda_deploy.errors import SfdaError
from sfda_deploy.export.export_settings import ExportSettings
from sfda_deploy.messages import plural, say
from sfda_deploy.metadata import ModelMeta, read_onnx_meta
from sfda_deploy.runs import user_cache_dir, write_bytes
from sfda_deploy.runtime.engine import import_tensorrt
from sfda_deploy.runtime.engine_file import cache_key, make_sidecar
from sfda_deploy.state_dict import file_sha256

# what export --trt says when this machine cannot build engines
BUILD_ELSEWHERE = ("build the engine on the deployment machine from the exported ONNX ('sfda-deploy export "
                   "CKPT --trt' there), or export ONNX only (drop --trt)")


# ------------------------------------------------------------------------------ versions
def engine_device(device: str) -> str:
    """The CUDA device engines are built and checked on: ``--device`` when it is a GPU, else ``cuda``
    (export's ``--device`` only places the torch reference, which may well stay on the CPU)."""
    return device_name(device) if is_cuda(device) else "cuda"


def major_version(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt) -> int:
    """``create_network`` flags: strongly typed where the enum still has the flag (10.x; ignored on 11.x)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


# ----------------------------------------------------------------------------------- shapes
def _round_to(value: int, stride: int) -> int:
    return max(stride, (value // stride) * stride)


def profile_shapes(imgsz: tuple[int, int], batch: int, dynamic: bool, stride: int,
                   max_batch: Optional[int] = None, max_imgsz: Optional[tuple[int, int]] = None) -> dict:
    """min/opt/max input shapes ``[B,3,H,W]`` of the optimization profile.

    Static: all three are ``(batch, 3, H, W)``. Dynamic: batch 1…``max_batch``, sizes from half of
    ``imgsz`` (rounded down to the output stride) up to ``max_imgsz``, optimized for ``(batch, H, W)``.
    TensorRT sizes an execution context's activation memory for the profile's max, so the max defaults
    to the export's own batch and size (``--max-batch``/``--max-imgsz`` raise it): a max of batch 8 at
    twice 1024x2048 took tens of GB for DeepLabV2.

    Raises:
        SfdaError: bounds below the export size, or a size that is not a multiple of ``stride``.
    """
    h, w = imgsz
    opt = [batch, 3, h, w]
    if not dynamic:
        if max_batch is not None or max_imgsz is not None:
            raise SfdaError("--max-batch/--max-imgsz bound a dynamic engine's profile: add --dynamic or drop them")
        return {"min": opt, "opt": opt, "max": opt}
    top_b = batch if max_batch is None else max_batch
    top_h, top_w = imgsz if max_imgsz is None else tuple(max_imgsz)
    if top_b < batch:
        raise SfdaError(f"--max-batch {top_b} is below --batch {batch} (the batch the engine is optimized for): "
                        f"pass --max-batch {batch} or more")
    if top_h < h or top_w < w or top_h % stride or top_w % stride:
        up_h, up_w = (-(-max(top, low) // stride) * stride for top, low in ((top_h, h), (top_w, w)))
        raise SfdaError(f"--max-imgsz {top_h} {top_w} must be at least the export size {h} {w} and a multiple of "
                        f"the output stride {stride}: e.g. --max-imgsz {up_h} {up_w}")
    return {"min": [1, 3, _round_to(h // 2, stride), _round_to(w // 2, stride)], "opt": opt,
            "max": [top_b, 3, top_h, top_w]}


# ----------------------------------------------------------------------------------- build
def parse_onnx(trt, builder, logger, onnx_path: Path):
    """A strongly typed network from ``onnx_path``; every parser error is printed, then raised."""
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for err in errors:
            say(f"TensorRT ONNX parser: {err}")
        first = errors[0].splitlines()[0] if errors else "unknown error"
        raise SfdaError(f"TensorRT {trt.__version__} cannot parse {onnx_path} ({plural(len(errors), 'error')}, first: "
                        f"{first[:200]}): report the architecture; the ONNX itself still runs in ONNX Runtime")
    return network, parser


def builder_config(trt, builder, network, shapes: dict, workspace_gb: float):
    """The build's config: workspace limit, a profile for dynamic inputs (on the network's own input
    name), and TF32 OFF.

    TensorRT turns TF32 on by default (Ampere and later): float32 layers would then multiply in 10-bit
    mantissas, and an "fp32" engine would not be float32 (its parity gate compares against fp32 torch).
    The network is strongly typed, so the ONNX's own types (fp32, fp16, int8 Q/DQ) set the precision.
    """
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    network_input = network.get_input(0)
    if any(d < 0 for d in network_input.shape):
        profile = builder.create_optimization_profile()
        profile.set_shape(network_input.name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    return config


def timing_cache_path(trt_version: str, gpu: str, root: Optional[Path] = None) -> Path:
    """The timing cache of one GPU model and TensorRT version, shared by every build on this machine.

    Args:
        root: the cache directory (default: ``runs.user_cache_dir() / "tensorrt"``).
    Returns:
        ``root/<gpu-name-slug>-trt<version>.timing-cache``, e.g. ``nvidia-h100-80gb-hbm3-trt10.9.0.timing-cache``.
    """
    slug = re.sub(r"[^a-z0-9.]+", "-", str(gpu).lower()).strip("-") or "gpu"
    return Path(root or user_cache_dir() / "tensorrt") / f"{slug}-trt{trt_version}.timing-cache"


def _attach_timing_cache(config, timing_cache: Path):
    """The cache of ``timing_cache`` (empty if missing) set on ``config``; returns it.

    ``ignore_mismatch=False``: a cache recorded with other CUDA device properties is refused, not used
    (``True`` would load it anyway and pick tactics timed on another device). The file name is already
    keyed by GPU model and TensorRT version, so a refusal means the device changed (driver, clocks):
    the build then starts from an empty cache, which it writes back.
    """
    data = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False) and data:
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_serialized(trt, onnx_path: Path, shapes: dict, workspace_gb: float,
                     timing_cache: Optional[Path] = None) -> bytes:
    """Build an engine plan from ``onnx_path`` with ``trt`` (``tensorrt`` or ``tensorrt_rtx``).

    Args:
        shapes: ``profile_shapes`` result; a profile is added when the ONNX input has dynamic dims.
        workspace_gb: workspace memory pool limit.
        timing_cache: read if present, written back after the build (makes rebuilds fast;
            ``timing_cache_path`` keeps one per GPU model and TensorRT version).
    Returns:
        The serialized engine bytes.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(trt, builder, logger, onnx_path)  # parser must outlive the build
    config = builder_config(trt, builder, network, shapes, workspace_gb)
    cache = _attach_timing_cache(config, timing_cache) if timing_cache is not None else None
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SfdaError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see its log "
                        "above): try a larger --workspace or a static export (drop --dynamic)")
    if cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _onnx_meta(onnx_path: Path) -> ModelMeta:
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    return read_onnx_meta({p.key: p.value for p in proto.metadata_props}, str(onnx_path))


def build_engine(onnx_path: Path, settings: ExportSettings, imgsz: tuple[int, int],
                 timing_cache: Optional[Path] = None) -> tuple[bytes, dict]:
    """Build an engine plan from an exported ONNX on this machine's GPU (``settings.device``, entered for
    the whole build, so ``cuda:1`` builds on GPU 1 as its cache key says).

    Args:
        timing_cache: default ``timing_cache_path`` of this GPU and TensorRT version.
    Returns:
        ``(plan bytes, sidecar dict)``: write them with ``write_engine`` once the engine passed its checks.
    """
    import torch

    device = engine_device(settings.device)
    trt = import_tensorrt(device, "--trt", BUILD_ELSEWHERE)
    meta = _onnx_meta(onnx_path)
    stride = int(meta.extra.get("output_stride") or 8)
    shapes = profile_shapes(imgsz, settings.batch, settings.dynamic, stride, settings.max_batch,
                            settings.max_imgsz)
    gpu = gpu_info(device)
    timing_cache = timing_cache or timing_cache_path(trt.__version__, gpu["gpu"])
    say(f"building a TensorRT {trt.__version__} engine on {gpu['gpu']} from {onnx_path.name} "
          f"({meta.extra.get('precision', 'fp32')}, this takes a while; timing cache {timing_cache})")
    with torch.cuda.device(torch.device(device)):
        plan = build_serialized(trt, onnx_path, shapes, settings.workspace, timing_cache)
    key = cache_key(trt.__version__, gpu, shapes, meta.extra.get("precision", "fp32"), file_sha256(onnx_path))
    return plan, make_sidecar(meta, key, onnx_path.name)

