"""Runtime: backends (torch, ONNX Runtime, TensorRT), the threaded pipeline, rendering.

Frames come from ``sfda_deploy.data.sources`` (images, folders, videos, webcams, streams).
"""
from sfda_deploy.runtime.backends import Backend, load_backend  # noqa: F401
from sfda_deploy.runtime.ort import OrtBackend  # noqa: F401
from sfda_deploy.runtime.pipeline import Prediction, run_pipeline, stream_inference  # noqa: F401
from sfda_deploy.runtime.torch_backend import TorchBackend  # noqa: F401
