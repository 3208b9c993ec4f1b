"""INT8 for ONNX Runtime's CPU provider (``export --int8-cpu`` → ``model_int8_cpu.onnx``).

The Q/DQ file of ``export --int8`` is TensorRT's: symmetric INT8 activations, per-tensor weights and
its unquantized layers in fp16, which ONNX Runtime's CPU kernels run slower than the fp32 model (issue
20: 994 vs 578 ms per 512x1024 frame). This file is made for the CPU instead, calibrated on the same
target frames:

- ONNX Runtime's quantization pre-processing first (``quant_pre_process``: graph optimisation and
  shape inference; without it ORT warns that quantization may be poor);
- QDQ format, which ORT's CPU provider fuses into ``QLinearConv``/``QLinearMatMul`` kernels (QOperator
  ran at the same speed, 134-139 vs 143 ms on 512x1024, and QDQ is the format ORT maintains);
- unsigned 8-bit activations with a zero-point (ReLU6 outputs use the whole range) and signed 8-bit
  per-channel weights (U8S8: what VNNI's ``vpdpbusd`` multiplies; per-channel kept 0.4 points more
  pixel agreement than per-tensor), full 8-bit range (``reduce_range`` only matters on CPUs without
  VNNI, where U8S8 can saturate);
- MinMax calibration (ORT's own default for asymmetric U8 activations; the entropy calibrator made
  for TensorRT's symmetric ranges is several times slower at 512x1024);
- the classifier Conv and the bilinear resize after it in fp32 (``head_nodes``): 0.2 points more pixel
  agreement and 10 % faster than quantizing them (88.7 vs 98.9 ms, alternated);
- float32 everywhere else (never fp16: ORT's CPU provider has few fp16 kernels).

The measured choices are in docs/benchmark.md ("INT8 on CPU", ``scripts/cpu_int8.py``).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import CPU_INT8, ModelMeta

INT8_MIOU_GATE = 0.5  # |ΔmIoU| points the INT8 file may lose or gain vs torch (issue 6's fidelity target)


def check_miou(title: str, result: dict) -> None:
    """Raise (the file is then not kept) when ``result["delta_miou"]`` is beyond ``INT8_MIOU_GATE``
    points; no labels (None): reported, not gated."""
    delta = result["delta_miou"]
    if delta is not None and abs(delta) > INT8_MIOU_GATE:
        raise SfdaError(f"{title} changes mIoU by {delta:+.2f} points (> {INT8_MIOU_GATE}): not kept; calibrate on "
                        "more target frames (--calib-count) or use the fp32 model.onnx")


@dataclass(frozen=True)
class CpuInt8Options:
    """How ``quantize_cpu`` quantizes (``scripts/cpu_int8.py`` compares the choices).

    Attributes:
        method: activation range calibration: ``minmax``, ``entropy`` or ``percentile``.
        per_channel: one weight scale per output channel.
        qoperator: QOperator format (``QLinearConv`` nodes) instead of QDQ.
        float_head: leave the classifier Conv and the resize/argmax after it in fp32.
    """

    method: str = "minmax"
    per_channel: bool = True
    qoperator: bool = False
    float_head: bool = True


def preprocess(src: Path, dst: Path) -> None:
    """ONNX Runtime's quantization pre-processing (graph optimisation + ONNX shape inference)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    except Exception as e:  # ORT raises bare exceptions for graphs it cannot optimise
        raise SfdaError(f"ONNX Runtime's quantization pre-processing failed on {src.name} ({e}): export without "
                        "--int8-cpu and report the architecture") from None


class _DropAxisWarnings(logging.Filter):
    """Drops ONNX Runtime's root-logger ``Axis N is out-of-range for weight ...`` lines: the quantizer then
    quantizes that weight per tensor instead of per channel (a weight without a channel axis), which is
    what it should do, so the raw ``WARNING:root:`` line only alarms."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is out-of-range for weight" not in record.getMessage()


@contextlib.contextmanager
def quiet_axis_warnings():
    """``_DropAxisWarnings`` on the root logger (and its handlers) inside the block."""
    root, drop = logging.getLogger(), _DropAxisWarnings()
    targets = [root, *root.handlers]
    for target in targets:
        target.addFilter(drop)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(drop)


def quantize_cpu(src: Path, dst: Path, frames, meta: ModelMeta, options: CpuInt8Options = CpuInt8Options()) -> str:
    """fp32 ONNX → INT8 ONNX for ONNX Runtime's CPU provider, calibrated on ``frames``; returns the tool.

    Args:
        src: fp32 ONNX (static or dynamic).
        dst: where to write the self-contained INT8 ONNX (``meta`` attached, plus ``quantization: cpu-int8``).
        frames: target frames at the deployment size (``frames.Frame``).
        meta: the export's metadata (``precision: int8``).
        options: quantizer choices.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from sfda_deploy.export.calibration import (
        batch_reader,
        calibration_batches,
        calibration_method,
        calibration_stride,
        head_nodes,
        onnx_batch,
    )
    from sfda_deploy.export.onnx import save_onnx

    batches = list(calibration_batches(frames, meta, onnx_batch(src)))
    with tempfile.TemporaryDirectory(dir=Path(dst).parent, prefix=".int8cpu-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        preprocess(src, pre)
        exclude = head_nodes(onnx.load(str(pre), load_external_data=False)) if options.float_head else None
        with quiet_axis_warnings():
            quantize_static(str(pre), str(out), batch_reader(batches),
                            quant_format=QuantFormat.QOperator if options.qoperator else QuantFormat.QDQ,
                            per_channel=options.per_channel, reduce_range=False,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calibration_method(options.method), nodes_to_exclude=exclude,
                            extra_options={"CalibStridedMinMax": calibration_stride(len(batches), batches[0].shape)})
        meta = meta.replace(extra={**meta.extra, "quantization": CPU_INT8})
        save_onnx(onnx.load(str(out)), meta, Path(dst))
    return "onnxruntime"
