"""Runtime: backends (torch, ONNX Runtime, TensorRT), sources, the threaded pipeline, rendering."""
from sfda_deploy.runtime.backends import Backend, load_backend  # noqa: F401
from sfda_deploy.runtime.torch_backend import TorchBackend  # noqa: F401
from sfda_deploy.runtime.ort import OrtBackend  # noqa: F401
from sfda_deploy.runtime.pipeline import Prediction, run_pipeline, stream_inference  # noqa: F401
from sfda_deploy.runtime.sources import open_source  # noqa: F401
