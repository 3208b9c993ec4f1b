"""What an ONNX file runs as on ONNX Runtime: the graph optimisation ``--ort-opt auto`` picks for its net,
size and device (``choose_optimization``, a rule from alternated measurements), and which INT8 flavour
it is (``int8_note``). Pure functions, apart from ``file_meta`` (reads the file's metadata)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from sfda_deploy.device import is_cuda
from sfda_deploy.metadata import QUANTIZATION_NAMES, TRT_QDQ


def int8_note(quantization: Optional[str], device: str) -> Optional[str]:
    """Which INT8 flavour a file is (``metadata.quantization_of``), and the right file when it is the wrong
    one for ``device``; None for float files."""
    if quantization is None:
        return None
    line = f"runs {QUANTIZATION_NAMES.get(quantization, quantization)} [{quantization}]"
    if quantization == TRT_QDQ and not is_cuda(device):
        line += ("; on CPU this file is slower than the fp32 model.onnx: export --int8-cpu makes "
                 "model_int8_cpu.onnx for ONNX Runtime's CPU provider")
    return line


AUTO_EXTENDED_FROM = 512 * 1024  # pixels from which --ort-opt auto runs DeepLabV2 at "extended"


def choose_optimization(level: str, quantization: Optional[str], arch: Optional[str],
                        size: Optional[tuple[int, int]], device: str) -> tuple[str, Optional[str]]:
    """The graph optimisation a file runs at, and why when it is not simply the one asked for.

    ``auto`` (the default) on CPU is a rule from alternated measurements (docs/benchmark.md): ONNX
    Runtime's NCHWc layout (``all``) is faster for the real-time nets at every size measured and for
    DeepLabV2 below 512x1024, slower for DeepLabV2 from 512x1024 up (12.7 vs 15.2 s and 47 vs 75 s per
    frame at 512x1024 and 1024x2048), which runs at ``extended``. On a GPU, ``auto`` is ``all``.
    TensorRT's Q/DQ file carries fp16 scales, which ONNX Runtime's CPU QDQ fusions (``QLinearConcat``,
    ``extended`` and up) reject as an invalid graph: on CPU it always runs at ``basic``.

    Args:
        level: ``--ort-opt`` (``GRAPH_OPTIMIZATIONS``).
        quantization: ``metadata.quantization_of`` the file (None: float).
        arch, size: the model's architecture and ``(H, W)`` input (None when unknown).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
    """
    cpu = not is_cuda(device)
    if quantization == TRT_QDQ and cpu and level != "basic":
        return "basic", ("graph optimisation basic: ONNX Runtime's CPU fusions reject the fp16 scales of "
                         "TensorRT's Q/DQ file")
    if level != "auto":
        return level, None
    if not cpu:
        return "all", None
    if (arch or "").startswith("deeplabv2") and size is not None and size[0] * size[1] >= AUTO_EXTENDED_FROM:
        return "extended", (f"--ort-opt auto picked extended: {arch} at {size[0]}x{size[1]} runs faster without "
                            "ONNX Runtime's NCHWc layout (docs/benchmark.md)")
    return "all", "--ort-opt auto picked all (ONNX Runtime's NCHWc layout, the faster one for this net and size)"


def file_meta(path: Path):
    """The ``ModelMeta`` of an ONNX file, read without its weights (None when it has none or is unreadable:
    ``create_session``/``read_onnx_meta`` then say what is wrong)."""
    import onnx

    from sfda_deploy.metadata import read_onnx_meta

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return read_onnx_meta(props, str(path))
    except Exception:  # noqa: BLE001 (any failure here is reported by the session that follows)
        return None
