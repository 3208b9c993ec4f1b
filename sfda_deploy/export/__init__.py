"""Export: torch → ONNX (with metadata and parity), ONNX → TensorRT engine, fidelity reports.

Sampled frames for the parity gate and calibration are ``sfda_deploy.data.frames``; the engine file
format (sidecar, build key) is ``sfda_deploy.runtime.engine_file``. The commands ``export`` and ``verify`` are
``sfda_deploy.commands.export`` and ``sfda_deploy.commands.verify``.
"""
from sfda_deploy.export.calibration import quantize_qdq
from sfda_deploy.export.onnx import check_imgsz, convert_fp16, export_module, save_onnx
from sfda_deploy.export.tensorrt import build_engine, build_serialized
from sfda_deploy.export.verify import Fidelity, compare_runners, format_fidelity, open_runner

__all__ = ["Fidelity", "build_engine", "build_serialized", "check_imgsz", "compare_runners", "convert_fp16",
           "export_module", "format_fidelity", "open_runner", "quantize_qdq", "save_onnx"]
