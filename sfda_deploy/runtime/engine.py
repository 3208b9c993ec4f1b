"""The TensorRT backend (TensorRT 10/11 named-tensor API) and the guarded import of TensorRT.

The engine file and its sidecar (metadata + build key) are ``runtime.engine_file``. ``tensorrt`` is
imported lazily and only after CUDA is known to be there (creating TensorRT objects without a GPU
crashes some builds).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sfda_deploy.device import gpu_info, is_cuda, parse_device
from sfda_deploy.errors import SfdaError
from sfda_deploy.runtime import io as batch_io  # the I/O helpers every backend shares
from sfda_deploy.runtime.engine_file import REBUILD, check_engine_key, read_sidecar

INSTALL_HINT = ("pip install 'sfda-deploy[trt]' (TensorRT 11, NVIDIA driver >= 580) or 'sfda-deploy[trt-cu12]' "
                "(TensorRT 10, CUDA 12 driver); on Jetson, JetPack 6's TensorRT (README, 'Install')")
RUN_ONNX = "run the .onnx with --backend onnxruntime, or use a machine with an NVIDIA GPU"


TORCH_CUDA_FIX = ("install torch's CUDA build for this machine ('make install' picks it; README, 'Install' has the "
                  "command per platform, Jetson included)")


def nvidia_gpu_present(dev: Path = Path("/dev"), tegra_release: Path = Path("/etc/nv_tegra_release")) -> bool:
    """An NVIDIA GPU on this machine, seen without torch: a ``/dev/nvidia0`` device node (x86 driver) or a
    Jetson/DRIVE board (``/etc/nv_tegra_release``, where there is no nvidia-smi)."""
    return (dev / "nvidia0").exists() or tegra_release.is_file()


def no_cuda_message(what: str, fix: str, trt_installed: bool, gpu_present: bool, torch_version: str,
                    torch_cuda: Optional[str]) -> str:
    """Why ``what`` cannot run when torch sees no CUDA GPU, and what to do (pure: facts in, message out).

    Args:
        torch_version / torch_cuda: ``torch.__version__`` and ``torch.version.cuda`` (None: a CPU build).
    """
    if gpu_present and torch_cuda is None:
        trt = "TensorRT is installed and " if trt_installed else ""
        return (f"{what}: {trt}an NVIDIA GPU is present, but torch {torch_version} is a CPU-only build (no CUDA), "
                f"so the GPU cannot be used: {TORCH_CUDA_FIX}")
    if gpu_present:
        return (f"{what}: an NVIDIA GPU is present but torch {torch_version} (built for CUDA {torch_cuda}) cannot "
                "use it (a driver older than that CUDA needs, or not loaded: check nvidia-smi or the JetPack "
                f"version): install the torch build that matches the driver ({TORCH_CUDA_FIX}), or {fix}")
    also = "" if trt_installed else f" (and TensorRT, not installed either: {INSTALL_HINT})"
    return (f"{what} needs a CUDA GPU{also} and none is visible (TensorRT cannot build or run engines on CPU): "
            f"{fix}")


def tensorrt_missing() -> Optional[str]:
    """Why TensorRT engines cannot be built or run here (``"no CUDA GPU"``, ``"TensorRT is not installed"``),
    or None when they can. Nothing of TensorRT is imported (``find_spec`` only looks it up)."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    return None


def require_tensorrt(device: str = "cuda", what: str = "a TensorRT engine", fix: str = RUN_ONNX) -> None:
    """Refuse before anything of TensorRT is imported: package missing, no CUDA GPU, or a CPU device.

    Args:
        device: where the engine will be built/run (``cuda`` or ``cuda:N``).
        what: who needs TensorRT, for the message (``--trt``, ``a TensorRT engine``).
        fix: what the user can do instead, appended to the no-GPU message.
    """
    installed = importlib.util.find_spec("tensorrt") is not None  # looks it up without importing it
    if not torch.cuda.is_available():
        raise SfdaError(no_cuda_message(what, fix, installed, nvidia_gpu_present(), torch.__version__,
                                        torch.version.cuda))
    if not installed:
        raise SfdaError(f"{what} needs TensorRT, which is not installed: {INSTALL_HINT}")
    if not is_cuda(device):
        raise SfdaError(f"TensorRT runs on the GPU only, not --device {device}: pass --device cuda")


def import_tensorrt(device: str = "cuda", what: str = "a TensorRT engine", fix: str = RUN_ONNX):
    """The ``tensorrt`` module, imported only once ``require_tensorrt`` passed (see module doc)."""
    require_tensorrt(device, what, fix)
    try:
        import tensorrt as trt
    except ImportError as e:  # installed but broken (e.g. missing CUDA libraries)
        raise SfdaError(f"tensorrt is installed but cannot be imported ({e}): {INSTALL_HINT}") from None
    return trt


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "FP8": torch.float8_e4m3fn,
                 "INT32": torch.int32, "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8,
                 "BOOL": torch.bool}


def torch_dtype(trt_dtype, tensor: str, engine: str) -> torch.dtype:
    """The torch dtype of a TensorRT ``DataType`` (by name: FLOAT, HALF, BF16, FP8, INT8/32/64, UINT8, BOOL).

    Raises:
        SfdaError: an I/O type torch has no tensor for (INT4, FP4, ...).
    """
    name = getattr(trt_dtype, "name", str(trt_dtype))
    if name not in _TORCH_DTYPES:
        raise SfdaError(f"{engine}: tensor '{tensor}' is {name}, which sfda-deploy cannot feed or read: "
                        f"re-export with a float32/float16 input and logits or mask output ({REBUILD})")
    return _TORCH_DTYPES[name]


def set_input_shape(context, input_name: str, shape: tuple[int, ...], user_managed: bool, device,
                    stream=None) -> Optional[torch.Tensor]:
    """Give ``context`` the input shape, then (``user_managed``) the activation memory THAT shape needs.

    Args:
        context: an ``IExecutionContext`` created with ``ExecutionContextAllocationStrategy.USER_MANAGED``
            when ``user_managed`` (else TensorRT's static allocation, sized for the profile's max).
        stream: the CUDA stream handle for ``set_optimization_profile_async`` (None: static shapes).
    Returns:
        the device buffer now used by the context (keep it alive), or None.
    Raises:
        SfdaError: TensorRT refused the shape.
    """
    if stream is not None:
        context.set_optimization_profile_async(0, stream)
    if not context.set_input_shape(input_name, tuple(shape)):
        raise SfdaError(f"the engine refuses input shape {tuple(shape)} for '{input_name}': pick --imgsz/--batch "
                        f"inside its profile or {REBUILD}")
    if not user_managed:
        return None
    size = int(context.update_device_memory_size_for_shapes())
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=device)  # torch's blocks are 512-byte aligned
    context.set_device_memory(workspace.data_ptr(), size)
    return workspace


def create_context(trt, engine):
    """(context, user_managed): activation memory allocated per input shape where this TensorRT can
    (``USER_MANAGED`` + ``update_device_memory_size_for_shapes``, 10.1 and later), else TensorRT's own."""
    strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
    user_managed = strategy is not None and hasattr(trt.IExecutionContext, "update_device_memory_size_for_shapes")
    if user_managed:
        return engine.create_execution_context(strategy.USER_MANAGED), True
    return engine.create_execution_context(), False


class TensorRTBackend:
    """A serialized engine run with named I/O tensors and ``execute_async_v3`` on a stream of its own
    (TensorRT's docs warn that the legacy default stream adds device synchronisations), ordered after
    torch's current stream for the input and before it for the output."""

    name = "tensorrt"

    def __init__(self, path: Path, device: str, imgsz: Optional[tuple[int, int]], batch: int):
        self.meta, key = read_sidecar(path)  # before any GPU work: a bad sidecar fails fast anywhere
        trt = import_tensorrt((device or "cpu").lower())
        self.device = parse_device(device)
        running = {"tensorrt": trt.__version__, **gpu_info(self.device)}
        self.notes = check_engine_key(path, key, running)
        torch.cuda.set_device(torch.device(self.device).index or 0)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise SfdaError(f"TensorRT {trt.__version__} cannot deserialize {path.name}: {REBUILD}")
        self.context, self._user_managed = create_context(trt, self.engine)
        self._stream = torch.cuda.Stream(device=self.device)
        self._workspace = None
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise SfdaError(f"{path.name} has inputs {inputs} and outputs {outputs}; expected one of "
                            "each: re-export with 'sfda-deploy export CKPT --trt'")
        self.input_name, self.output_name = inputs[0], outputs[0]
        dims = [d if d > 0 else None for d in self.engine.get_tensor_shape(self.input_name)]
        self.batch, self.input_size = batch_io.resolve_shape(dims, self.meta, imgsz, batch, path.name)
        self.input_dtype = torch_dtype(self.engine.get_tensor_dtype(self.input_name), self.input_name, path.name)
        self.output_dtype = torch_dtype(self.engine.get_tensor_dtype(self.output_name), self.output_name, path.name)
        self.output_kind = "mask" if len(self.engine.get_tensor_shape(self.output_name)) == 3 \
            else self.meta.extra.get("output", "logits")
        if self.output_kind == "logits":
            channels = self.engine.get_tensor_shape(self.output_name)[1]
            batch_io.check_classes(self.meta, channels if channels > 0 else None, path.name)
        self.providers = [f"TensorRT {trt.__version__} on {running['gpu']}"]
        self._bind((self.batch, 3, *self.input_size), dynamic=None in dims)

    def _bind(self, shape: tuple[int, ...], dynamic: bool) -> None:
        """Set (and check against the optimisation profile) the input shape; allocate the activation
        memory for that shape and the output."""
        if dynamic:
            lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                raise SfdaError(f"input {tuple(shape)} is outside the engine's profile "
                                f"{tuple(lo)}..{tuple(hi)}: pick --imgsz/--batch inside it or {REBUILD}")
        if self._workspace is not None:  # the engine may still be running in the memory about to be freed
            self._stream.synchronize()
        self._workspace = set_input_shape(self.context, self.input_name, shape, self._user_managed, self.device,
                                          self._stream.cuda_stream if dynamic else None)
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        self._out = torch.empty(out_shape, dtype=self.output_dtype, device=self.device)
        self.context.set_tensor_address(self.output_name, self._out.data_ptr())

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        padded = batch_io.pad_batch(batch_io.resize_batch(frames, self.input_size), self.batch)
        x = batch_io.torch_input(padded, self.meta, self.device)
        return x.to(self.input_dtype).contiguous()

    def _execute(self, inputs: torch.Tensor) -> torch.Tensor:
        """Enqueue the engine on its own stream, after torch's work on the input and before torch's reads
        of the output; returns the (device) output buffer."""
        self.context.set_tensor_address(self.input_name, inputs.data_ptr())
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)  # the input was written on torch's stream
        inputs.record_stream(self._stream)  # its memory is not reused before the engine has read it
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise SfdaError("TensorRT failed to run the engine (see its log above): " + REBUILD)
        current.wait_stream(self._stream)  # argmax / .cpu() on torch's stream see the finished output
        return self._out

    def infer(self, inputs: torch.Tensor) -> np.ndarray:
        return batch_io.labels_from_output(self._execute(inputs), self.output_kind)  # .cpu() waits for the stream

    def outputs(self, inputs: torch.Tensor) -> np.ndarray:
        return batch_io.host_output(self._execute(inputs), self.output_kind)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.context = self.engine = self._runtime = self._workspace = None
