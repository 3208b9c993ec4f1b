"""INT8 calibration on TARGET-domain frames: an explicit-quantization (Q/DQ) ONNX.

Why target frames: activation ranges measured on source images (the usual "calibrate on the training
set") miss the target's statistics, which is exactly what adaptation changed; calibrating on the
adaptation images or on a video of the deployment camera keeps INT8 faithful to the adapted model.

One way to an INT8 engine on both TensorRT 10 and 11: explicit quantization, a Q/DQ ONNX that the
engine builder reads with a strongly typed network (TensorRT 11 removed the implicit calibrators and
``BuilderFlag.INT8``; on 10.x they are deprecated, so they are not used). The Q/DQ ONNX comes from:
- NVIDIA ModelOpt (``modelopt.onnx.quantization.quantize``, entropy calibration, TensorRT's Q/DQ
  placement rules) when installed: ``pip install "sfda-deploy[modelopt]"`` in its own step, since it
  pins its own onnx;
- otherwise ONNX Runtime's static quantizer in the form TensorRT consumes (QDQ, symmetric INT8
  activations and weights, zero-point 0; ``Int8Options``).
The same file also runs in ONNX Runtime, so its parity is checked on CPU before any engine is built.

Layers left unquantized run in fp16, not fp32: a strongly typed network (every network on TensorRT 11)
takes each layer's precision from the graph, so an fp32 remainder would stay fp32. ModelOpt is asked
for it (``high_precision_dtype="fp16"``); ONNX Runtime's Q/DQ file is converted after quantizing
(``float_parts_to_fp16``: opset 19, where Q/DQ take fp16 scales, then onnxconverter-common's fp16 pass).
"""
from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import TRT_QDQ, ModelMeta

RECOMMENDED_FRAMES = 300  # TensorRT's guidance for classification/segmentation calibration sets
CALIB_CHUNK_PIXELS = 1 << 19  # frame pixels per calibration chunk: 16 frames of 128x256, 1 of 512x1024


def check_count(found: int) -> None:
    """No frames is an error; fewer than ``RECOMMENDED_FRAMES`` a warning (ranges get noisy)."""
    if found == 0:
        raise SfdaError("--calib-data holds no frames: pass target images or a video of the deployment camera")
    if found < RECOMMENDED_FRAMES:
        warnings.warn(f"calibrating INT8 on {found} frames (< {RECOMMENDED_FRAMES}): activation ranges may be "
                      "noisy; pass more target frames with --calib-data/--calib-count", stacklevel=2)


def calibration_batches(frames, meta: ModelMeta, batch: int):
    """Normalized float32 ``[batch,3,H,W]`` arrays (the last one padded by repetition)."""
    from sfda_deploy.data.frames import stack

    images, _ = stack(frames)
    x = meta.normalize_numpy(images)
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        yield np.ascontiguousarray(chunk)


def onnx_batch(path: Path) -> int:
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value or 1


def _quantize_modelopt(src: Path, dst: Path, calib: np.ndarray) -> None:
    from modelopt.onnx.quantization import quantize

    quantize(str(src), quantize_mode="int8", calibration_data={"images": calib}, calibration_method="entropy",
             calibration_eps=["cpu"], high_precision_dtype="fp16", output_path=str(dst))


@dataclass(frozen=True)
class Int8Options:
    """How ONNX Runtime's quantizer makes the Q/DQ ONNX (``scripts/export_fidelity.py`` compares them).

    Attributes:
        method: activation range calibration: ``entropy``, ``minmax`` or ``percentile``.
        per_channel: one weight scale per output channel. Off by default: on the trained MobileNetV2
            ASPP, ORT's per-channel Q/DQ flipped far more pixels than per-tensor weights did
            (``scripts/export_fidelity.py --variants default per-channel`` prints both).
        symmetric: symmetric INT8 activations (zero-point 0). TensorRT only reads symmetric Q/DQ, so an
            asymmetric file runs in ONNX Runtime but cannot become an engine.
        float_head: leave the final classifier Conv (and the resize/argmax after it) in float.
    """

    method: str = "entropy"
    per_channel: bool = False
    symmetric: bool = True
    float_head: bool = False


def head_nodes(model) -> list[str]:
    """Names of the nodes from the graph output back to (and including) the last Conv: the classifier.

    Args:
        model: an ``onnx.ModelProto`` with one output.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    names, tensor = [], model.graph.output[0].name
    while tensor in producer:
        node = producer[tensor]
        names.append(node.name)
        if node.op_type == "Conv":
            return names
        tensor = node.input[0]
    return []  # no Conv on the path: nothing to keep in float


def batch_reader(batches: list[np.ndarray]):
    """An ONNX Runtime ``CalibrationDataReader`` over ``batches`` (``{"images": [B,3,H,W]}`` each), served
    chunk by chunk (``set_range``, see ``calibration_stride``) so the calibrator's memory stays bounded."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.pos, self.end = 0, len(batches)

        def __len__(self):
            return len(batches)

        def set_range(self, start_index: int, end_index: int):
            self.pos, self.end = start_index, end_index

        def get_next(self):
            if self.pos >= self.end:
                return None
            self.pos += 1
            return {"images": batches[self.pos - 1]}

    return Reader()


def calibration_method(name: str):
    """ORT's ``CalibrationMethod`` called ``name`` (entropy, minmax, percentile); else a one-line SfdaError."""
    from onnxruntime.quantization import CalibrationMethod

    methods = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}
    if name not in methods:
        raise SfdaError(f"unknown INT8 calibration method '{name}': use {', '.join(methods)}")
    return methods[name]


def _quantize_onnxruntime(src: Path, dst: Path, batches: list[np.ndarray], options: Int8Options) -> None:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    method = calibration_method(options.method)
    exclude = head_nodes(onnx.load(str(src), load_external_data=False)) if options.float_head else None
    quantize_static(str(src), str(dst), batch_reader(batches), quant_format=QuantFormat.QDQ,
                    per_channel=options.per_channel,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=method, nodes_to_exclude=exclude,
                    # TensorRT reads only symmetric INT8 Q/DQ (zero-point 0), and rejects the INT32 bias
                    # DequantizeLinear ORT adds by default (biases stay float; TensorRT fuses them).
                    extra_options={"ActivationSymmetric": options.symmetric, "WeightSymmetric": True,
                                   "QuantizeBias": False,
                                   "CalibStridedMinMax": calibration_stride(len(batches), batches[0].shape)})


def calibration_stride(count: int, shape: tuple[int, ...]) -> int:
    """Batches per calibration chunk: the largest divisor of ``count`` within ``CALIB_CHUNK_PIXELS``.

    ORT's entropy/percentile calibrators keep every intermediate tensor of the batches they are given
    (~80 MB per 128x256 frame for MobileNetV2: 300 frames ran a 24 GB machine out of memory); fed in
    chunks (``CalibStridedMinMax``, which ORT requires to divide the count) they fold each chunk into
    their histograms and drop it.

    Args:
        count: number of calibration batches.
        shape: one batch ``[B,3,H,W]``.
    """
    per_batch = shape[0] * shape[2] * shape[3]
    limit = max(1, CALIB_CHUNK_PIXELS // per_batch)
    return max(d for d in range(1, min(limit, count) + 1) if count % d == 0)


QDQ_FP16_OPSET = 19  # QuantizeLinear/DequantizeLinear take fp16 scales (and give fp16) from opset 19


def float_parts_to_fp16(model):
    """A Q/DQ ModelProto whose float computation (the layers left unquantized, DequantizeLinear outputs)
    is fp16, with fp32 graph inputs/outputs as the other exports have.

    The default-domain opset is raised to 19 (every op of an opset-18 graph means the same there) so
    Q/DQ nodes can carry fp16 scales instead of being wrapped in casts.
    """
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise SfdaError("--int8 needs onnxconverter-common for its fp16 layers: pip install 'sfda-deploy[fp16]'") from None
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < QDQ_FP16_OPSET:
            opset.version = QDQ_FP16_OPSET
    return float16.convert_float_to_float16(model, keep_io_types=True)


def quantize_qdq(src: Path, dst: Path, frames, meta: ModelMeta, options: Int8Options = Int8Options()) -> str:
    """fp32 ONNX → INT8 Q/DQ ONNX calibrated on ``frames``; returns the tool used.

    Args:
        src: fp32 ONNX (static or dynamic).
        dst: where to write the self-contained Q/DQ ONNX (with ``meta`` attached).
        frames: target frames at the deployment size (``frames.Frame``).
        options: ONNX Runtime quantizer settings (ModelOpt, when installed, uses its own).
    """
    import onnx

    from sfda_deploy.export.onnx import save_onnx

    batches = list(calibration_batches(frames, meta, onnx_batch(src)))
    with tempfile.TemporaryDirectory(dir=Path(dst).parent, prefix=".qdq-") as tmp:
        out = Path(tmp) / "qdq.onnx"
        try:
            import modelopt.onnx.quantization  # noqa: F401
        except ImportError:
            method = "onnxruntime"
            _quantize_onnxruntime(src, out, batches, options)
            model = float_parts_to_fp16(onnx.load(str(out)))
        else:
            method = "modelopt"
            _quantize_modelopt(src, out, np.concatenate(batches))
            model = onnx.load(str(out))
        save_onnx(model, meta.replace(extra={**meta.extra, "quantization": TRT_QDQ}), Path(dst))
    return method
