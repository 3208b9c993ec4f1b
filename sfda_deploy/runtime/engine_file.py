"""The TensorRT engine file: a plain ``.engine`` plus its sidecar ``<engine>.json``, written by export and
checked by the runtime (one definition of the format for both)::

    {"meta": {... ModelMeta.to_dict() ...},
     "cache_key": {"tensorrt": "10.7.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                   "shapes": {...}, "precision": "fp16", "onnx_sha256": "..."},
     "onnx": "model.onnx"}

Engines only run with the TensorRT version and GPU architecture they were built with, so the key is
compared with the running TensorRT/GPU before deserializing. Nothing of TensorRT is imported here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.runs import write_bytes, write_json

REBUILD = "rebuild it on this machine with 'sfda-deploy export MODEL --trt' (or run the .onnx with --backend onnxruntime)"


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def read_sidecar(engine: Path) -> tuple[ModelMeta, dict[str, Any]]:
    """(metadata, cache key) from ``<engine>.json``; missing or unreadable → one-line error."""
    side = sidecar_path(engine)
    if not side.is_file():
        raise SfdaError(f"{engine} has no sidecar {side.name} (classes, mean/std, build key): "
                        "re-export with 'sfda-deploy export CKPT --trt', which writes both files")
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError):
        raise SfdaError(f"{side} is not readable JSON (not valid JSON or unreadable): "
                        "re-export with 'sfda-deploy export CKPT --trt'") from None
    meta = ModelMeta.from_dict(data.get("meta") if isinstance(data, dict) else None, str(side))
    return meta, dict(data.get("cache_key") or {})


def engine_mismatch(key: dict[str, Any], running: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Compare an engine's build key with the running TensorRT/GPU.

    Returns:
        (fatal, warnings): a different TensorRT version or compute capability cannot run the
        engine (fatal); the same architecture on another GPU model runs, maybe not at its best.
    """
    fatal, warn = [], []
    for field, label in (("tensorrt", "TensorRT"), ("compute_capability", "compute capability")):
        built, here = key.get(field), running.get(field)
        if built is None:
            warn.append(f"the sidecar does not record the {label} it was built with")
        elif str(built) != str(here):
            fatal.append(f"{label} {built} (built) vs {here} (here)")
    if key.get("gpu") and key.get("gpu") != running.get("gpu"):
        (warn if not fatal else fatal).append(f"GPU {key['gpu']} (built) vs {running.get('gpu')} (here)")
    return fatal, warn


def check_engine_key(engine: Path, key: dict[str, Any], running: dict[str, Any]) -> list[str]:
    """Raise when the engine was built for another TensorRT/GPU; return warnings to report."""
    fatal, warn = engine_mismatch(key, running)
    if fatal:
        raise SfdaError(f"{engine.name} was built elsewhere ({'; '.join(fatal)}): {REBUILD}")
    return [f"{engine.name}: {w}" for w in warn]


def cache_key(trt_version: str, device: dict, shapes: dict, precision: str, onnx_sha256: str) -> dict:
    """What an engine is only valid for; stored in the sidecar and compared at load time."""
    return {"tensorrt": str(trt_version), "gpu": device.get("gpu"),
            "compute_capability": device.get("compute_capability"), "shapes": shapes,
            "precision": precision, "onnx_sha256": onnx_sha256}


def make_sidecar(meta: ModelMeta, key: dict[str, Any], onnx_name: str) -> dict[str, Any]:
    """The sidecar's content: the metadata, the build key and the ONNX the engine was built from."""
    return {"meta": meta.to_dict(), "cache_key": key, "onnx": onnx_name}


def write_engine(engine_path: Path, plan: bytes, sidecar: dict) -> None:
    """The plain engine file and its ``<engine>.json`` sidecar (sidecar first, each written atomically)."""
    write_json(sidecar_path(engine_path), sidecar)
    write_bytes(engine_path, plan)
