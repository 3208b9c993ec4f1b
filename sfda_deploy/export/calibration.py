"""INT8 calibration on TARGET-domain frames: an explicit Q/DQ ONNX, or TensorRT 10's implicit calibrator.

Why target frames: activation ranges measured on source images (the usual "calibrate on the training
set") miss the target's statistics, which is exactly what adaptation changed; calibrating on the
adaptation images or on a video of the deployment camera keeps INT8 faithful to the adapted model.

Two ways to an INT8 engine:
- Explicit quantization (TensorRT 10 and 11, the only one on 11.x): a Q/DQ ONNX. NVIDIA ModelOpt
  (``modelopt.onnx.quantization.quantize``, entropy calibration, TensorRT's Q/DQ placement rules) when
  installed — ``pip install "sfda-deploy[modelopt]"`` in its own step, since it pins its own onnx;
  otherwise ONNX Runtime's static quantizer in the form TensorRT consumes (QDQ, symmetric INT8
  activations and per-channel weights, zero-point 0).
- Implicit quantization (TensorRT 10.x only, deprecated there): ``BuilderFlag.INT8`` plus an
  ``IInt8EntropyCalibrator2`` fed with the same frames (``make_entropy_calibrator``).
"""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta

RECOMMENDED_FRAMES = 300  # TensorRT's guidance for classification/segmentation calibration sets


def check_count(found: int, wanted: int) -> None:
    """No frames is an error; fewer than ``RECOMMENDED_FRAMES`` a warning (ranges get noisy)."""
    if found == 0:
        raise SfdaError("--calib-data holds no frames: pass target images or a video of the deployment camera")
    if found < min(wanted, RECOMMENDED_FRAMES):
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
                    # TensorRT reads only symmetric INT8 Q/DQ (zero-point 0).
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


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


def make_entropy_calibrator(trt, batches: list[np.ndarray], cache_path: Path):
    """A TensorRT 10.x ``IInt8EntropyCalibrator2`` over normalized batches (needs CUDA via torch).

    The device buffer is a torch CUDA tensor, so no pycuda/cuda-python dependency is needed.
    """
    import torch

    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise SfdaError(f"TensorRT {trt.__version__} has no implicit INT8 calibrator (removed in 11.x): "
                        "the engine is built from the Q/DQ ONNX instead")

    class EntropyCalibrator(base):
        def __init__(self):
            super().__init__()
            self.batches = iter(batches)
            self.size = batches[0].shape[0]
            self.device = None

        def get_batch_size(self):
            return self.size

        def get_batch(self, names):
            x = next(self.batches, None)
            if x is None:
                return None
            self.device = torch.from_numpy(x).cuda()  # kept alive until the next call
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self):
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache):
            cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()
