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
  activations and per-channel weights, zero-point 0).
The same file also runs in ONNX Runtime, so its parity is checked on CPU before any engine is built.
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta

RECOMMENDED_FRAMES = 300  # TensorRT's guidance for classification/segmentation calibration sets


def check_count(found: int) -> None:
    """No frames is an error; fewer than ``RECOMMENDED_FRAMES`` a warning (ranges get noisy)."""
    if found == 0:
        raise SfdaError("--calib-data holds no frames: pass target images or a video of the deployment camera")
    if found < RECOMMENDED_FRAMES:
        warnings.warn(f"calibrating INT8 on {found} frames (< {RECOMMENDED_FRAMES}): activation ranges may be "
                      "noisy; pass more target frames with --calib-data/--calib-count", stacklevel=2)


def calibration_batches(frames, meta: ModelMeta, batch: int):
    """Normalized float32 ``[batch,3,H,W]`` arrays (the last one padded by repetition)."""
    from sfda_deploy.export.frames import stack

    images, _ = stack(frames)
    x = meta.normalize_numpy(images)
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        yield np.ascontiguousarray(chunk)


def _onnx_batch(path: Path) -> int:
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value or 1


def _quantize_modelopt(src: Path, dst: Path, calib: np.ndarray) -> None:
    from modelopt.onnx.quantization import quantize

    quantize(str(src), quantize_mode="int8", calibration_data={"images": calib},
             calibration_method="entropy", calibration_eps=["cpu"], output_path=str(dst))


def _quantize_onnxruntime(src: Path, dst: Path, batches: list[np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(batches)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"images": x}

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Entropy,
                    # TensorRT reads only symmetric INT8 Q/DQ (zero-point 0), and rejects the INT32 bias
                    # DequantizeLinear ORT adds by default (biases stay float; TensorRT fuses them).
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})


def quantize_qdq(src: Path, dst: Path, frames, meta: ModelMeta) -> str:
    """fp32 ONNX → INT8 Q/DQ ONNX calibrated on ``frames``; returns the tool used.

    Args:
        src: fp32 ONNX (static or dynamic).
        dst: where to write the self-contained Q/DQ ONNX (with ``meta`` attached).
        frames: target frames at the deployment size (``frames.Frame``).
    """
    import onnx

    from sfda_deploy.export.onnx import save_onnx

    batches = list(calibration_batches(frames, meta, _onnx_batch(src)))
    with tempfile.TemporaryDirectory(dir=Path(dst).parent, prefix=".qdq-") as tmp:
        out = Path(tmp) / "qdq.onnx"
        try:
            import modelopt.onnx.quantization  # noqa: F401
        except ImportError:
            method = "onnxruntime"
            _quantize_onnxruntime(src, out, batches)
        else:
            method = "modelopt"
            _quantize_modelopt(src, out, np.concatenate(batches))
        save_onnx(onnx.load(str(out)), meta, Path(dst))
    return method
