"""ONNX → TensorRT engine (TensorRT 10.x and 11.x), with a sidecar JSON cache key; a minimal engine runner.

Precision lives in the ONNX, not in builder flags. TensorRT 11 removed the weak-typing flags
(``BuilderFlag.FP16``/``INT8``) and the implicit INT8 calibrators; every network there is strongly
typed. So one path serves both major versions: the engine is built from the ONNX that already
carries its precision (fp32, the fp16 ONNX, or the INT8 Q/DQ ONNX calibrated on target frames) with
a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``: needed on 10.x to keep
the ONNX's types, accepted and ignored on 11.x). Nothing version-specific is set beyond that flag.

The engine is a plain ``.engine`` file (trtexec and any TensorRT runtime load it); its metadata and
cache key (TensorRT version, GPU name, compute capability, shapes, precision, ONNX sha256) go in the
sidecar ``<engine>.json`` (docs/contracts.md), so a stale engine is refused with a clear fix.

``tensorrt`` is imported only after a CUDA GPU was found: TensorRT objects created without a GPU can
crash the whole process. The builder functions take the module as an argument, so the test suite
drives them with TensorRT for RTX (``tensorrt_rtx``), whose Builder and OnnxParser run on CPU.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Optional

import numpy as np

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta, read_onnx_meta
from sfda_deploy.runs import write_bytes, write_json
from sfda_deploy.runtime.engine import read_sidecar, sidecar_path  # one sidecar format, shared with segment

INSTALL_HINT = "pip install 'sfda-deploy[trt]' (TensorRT 10.x or 11.x, on a machine with an NVIDIA GPU)"
DYNAMIC_MAX_BATCH = 8  # largest batch of a --dynamic engine's optimization profile (when --batch is smaller)


# ------------------------------------------------------------------------------ environment
def require_gpu() -> None:
    """Refuse ``--trt`` before anything is imported or written: TensorRT missing, or no CUDA GPU."""
    if importlib.util.find_spec("tensorrt") is None:
        raise SfdaError(f"--trt needs TensorRT, which is not installed: {INSTALL_HINT}; "
                        "or export ONNX only (drop --trt)")
    import torch

    if not torch.cuda.is_available():
        raise SfdaError("--trt needs a CUDA GPU and none is visible (TensorRT cannot build or run engines on "
                        "CPU): build the engine on the deployment machine from the exported ONNX "
                        "('sfda-deploy export CKPT --trt' there), or export ONNX only")


def import_tensorrt():
    """The ``tensorrt`` module, only once a GPU is known to be present."""
    require_gpu()
    import tensorrt

    return tensorrt


def gpu_info(device: str = "cuda") -> dict:
    """Name and compute capability of the CUDA device the engine is built for (part of the cache key)."""
    import torch

    index = torch.device(device).index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def major_version(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt) -> int:
    """``create_network`` flags: strongly typed where the enum still has the flag (10.x; ignored on 11.x)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


# ----------------------------------------------------------------------------------- shapes
def _round_to(value: int, stride: int) -> int:
    return max(stride, (value // stride) * stride)


def profile_shapes(imgsz: tuple[int, int], batch: int, dynamic: bool, stride: int) -> dict:
    """min/opt/max input shapes ``[B,3,H,W]`` of the optimization profile.

    Static: all three are ``(batch, 3, H, W)``. Dynamic: batch 1…max(batch, 8), sizes from half to
    twice ``imgsz`` (multiples of the output stride), optimized for ``(batch, H, W)``.
    """
    h, w = imgsz
    opt = [batch, 3, h, w]
    if not dynamic:
        return {"min": opt, "opt": opt, "max": opt}
    return {"min": [1, 3, _round_to(h // 2, stride), _round_to(w // 2, stride)], "opt": opt,
            "max": [max(batch, DYNAMIC_MAX_BATCH), 3, 2 * h, 2 * w]}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(trt_version: str, device: dict, shapes: dict, precision: str, onnx_sha256: str) -> dict:
    """What an engine is only valid for; stored in the sidecar and compared at load time."""
    return {"tensorrt": str(trt_version), "gpu": device.get("gpu"),
            "compute_capability": device.get("compute_capability"), "shapes": shapes,
            "precision": precision, "onnx_sha256": onnx_sha256}


# ----------------------------------------------------------------------------------- build
def parse_onnx(trt, builder, logger, onnx_path: Path):
    """A strongly typed network from ``onnx_path``; every parser error is printed, then raised."""
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for err in errors:
            print(f"TensorRT ONNX parser: {err}")
        first = errors[0].splitlines()[0] if errors else "unknown error"
        raise SfdaError(f"TensorRT {trt.__version__} cannot parse {onnx_path} ({len(errors)} errors, first: "
                        f"{first[:200]}): report the architecture; the ONNX itself still runs in ONNX Runtime")
    return network, parser


def build_serialized(trt, onnx_path: Path, shapes: dict, workspace_gb: float,
                     timing_cache: Optional[Path] = None, input_name: str = "images") -> bytes:
    """Build an engine plan from ``onnx_path`` with ``trt`` (``tensorrt`` or ``tensorrt_rtx``).

    Args:
        shapes: ``profile_shapes`` result; a profile is added when the ONNX input has dynamic dims.
        workspace_gb: workspace memory pool limit.
        timing_cache: read if present, written back after the build (makes rebuilds fast).
    Returns:
        The serialized engine bytes.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(trt, builder, logger, onnx_path)  # parser must outlive the build
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    dims = list(network.get_input(0).shape)
    if any(d < 0 for d in dims):
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=True)  # a cache of another GPU is just ignored
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise SfdaError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see its log "
                        "above): try a larger --workspace or a static export (drop --dynamic)")
    if cache is not None:
        write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _onnx_meta(onnx_path: Path) -> ModelMeta:
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    return read_onnx_meta({p.key: p.value for p in proto.metadata_props}, str(onnx_path))


def build_engine(onnx_path: Path, cfg, imgsz: tuple[int, int], timing_cache: Path) -> tuple[bytes, dict]:
    """Build an engine plan from an exported ONNX on this machine's GPU.

    Returns:
        ``(plan bytes, sidecar dict)``: write them with ``write_engine`` once the engine passed its checks.
    """
    trt = import_tensorrt()
    meta = _onnx_meta(onnx_path)
    stride = int(meta.extra.get("output_stride") or 8)
    shapes = profile_shapes(imgsz, cfg.batch, cfg.dynamic, stride)
    device = gpu_info(cfg.device if str(cfg.device).startswith("cuda") else "cuda")
    print(f"building a TensorRT {trt.__version__} engine on {device['gpu']} from {onnx_path.name} "
          f"({meta.extra.get('precision', 'fp32')}, this takes a while)")
    plan = build_serialized(trt, onnx_path, shapes, cfg.workspace, timing_cache,
                            meta.extra.get("input_name", "images"))
    key = cache_key(trt.__version__, device, shapes, meta.extra.get("precision", "fp32"), file_sha256(onnx_path))
    return plan, {"meta": meta.to_dict(), "cache_key": key, "onnx": onnx_path.name}


def write_engine(engine_path: Path, plan: bytes, sidecar: dict) -> None:
    """The plain engine file and its ``<engine>.json`` sidecar (sidecar first, each written atomically)."""
    write_json(sidecar_path(engine_path), sidecar)
    write_bytes(engine_path, plan)


def check_key(key: dict, trt_version: str, device: dict, engine_path: Path) -> None:
    """Engines are specific to a TensorRT version and a GPU model: refuse a mismatch with the fix."""
    if key.get("tensorrt") != str(trt_version):
        raise SfdaError(f"{engine_path} was built with TensorRT {key.get('tensorrt')} but {trt_version} is "
                        "installed: rebuild it here ('sfda-deploy export CKPT --trt') or install that version")
    if key.get("gpu") != device["gpu"] or key.get("compute_capability") != device["compute_capability"]:
        raise SfdaError(f"{engine_path} was built for {key.get('gpu')} (sm {key.get('compute_capability')}) but "
                        f"this is {device['gpu']} (sm {device['compute_capability']}): rebuild it on this GPU")


class EngineRunner:
    """Minimal TensorRT inference for ``verify`` and the export gate.

    ``__call__(images uint8 [N,H,W,3]) → logits [N,C,H,W] float32 or labels [N,H,W]``. Device memory is
    torch CUDA tensors (no pycuda). ``sfda_deploy.runtime`` owns the full-featured backend.
    """

    def __init__(self, path: Path, device: str = "cuda"):
        import torch

        trt = import_tensorrt()
        self.meta, key = read_sidecar(Path(path))
        self.device = torch.device(device if str(device).startswith("cuda") else "cuda")
        check_key(key, trt.__version__, gpu_info(str(self.device)), Path(path))
        shapes = key.get("shapes") or {}
        fixed = shapes.get("min") == shapes.get("max") and shapes.get("min")
        self.fixed_batch = fixed[0] if fixed else None
        self.fixed_imgsz = tuple(fixed[2:]) if fixed else None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise SfdaError(f"TensorRT cannot load {path} (see its log above): rebuild it on this machine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self._torch_dtype = {trt.float32: torch.float32, trt.float16: torch.float16,
                             trt.int32: torch.int32, trt.int8: torch.int8}
        if hasattr(trt, "uint8"):
            self._torch_dtype[trt.uint8] = torch.uint8

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(self.meta.normalize_numpy(images)).to(self.device)
        name = self.inputs[0]
        self.context.set_input_shape(name, tuple(x.shape))
        self.context.set_tensor_address(name, x.data_ptr())
        out_name = self.outputs[0]
        shape = tuple(self.context.get_tensor_shape(out_name))
        out = torch.empty(shape, dtype=self._torch_dtype[self.engine.get_tensor_dtype(out_name)],
                          device=self.device)
        self.context.set_tensor_address(out_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise SfdaError("TensorRT inference failed (see its log above): rebuild the engine on this machine")
        stream.synchronize()
        return out.float().cpu().numpy() if out.is_floating_point() else out.cpu().numpy()
