"""The ``.onnx`` backend: an ONNX Runtime session (``sfda_deploy.onnxrt.create_session``, providers verified)
behind the ``runtime.backends.Backend`` protocol.

On a GPU the session's TensorRT provider reuses its cached engine (``onnxrt.trt_cache_dir``), and the
backend keeps inputs and outputs on the device (I/O binding): argmax runs there and only the uint8 label
map crosses to the host.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sfda_deploy.device import is_cuda
from sfda_deploy.metadata import quantization_of
from sfda_deploy.onnxrt import (
    check_graph_optimization,
    create_session,
    import_onnxruntime,
    requested_providers,
)
from sfda_deploy.runtime.io import (
    check_classes,
    host_output,
    labels_from_output,
    pad_batch,
    resize_batch,
    resolve_shape,
    static_dims,
    torch_input,
)
from sfda_deploy.runtime.ort_choice import choose_optimization, file_meta, int8_note
from sfda_deploy.threads import default_threads

# ----------------------------------------------------------------------------------- backend
_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int32)": torch.int32,
              "tensor(int64)": torch.int64, "tensor(uint8)": torch.uint8}


class OrtBackend:
    """An ``.onnx`` file run by ONNX Runtime with verified providers (TensorRT EP, CUDA, CPU).

    On CUDA (or with ``io_binding=True``) inputs and outputs stay in device tensors bound to the session
    (``run_with_iobinding``): no full logits copy to the host, argmax on the device.
    """

    name = "onnxruntime"

    def __init__(self, path: Path, device: str, imgsz, batch: int, threads: Optional[int] = None,
                 spinning: bool = False, optimization: str = "all", io_binding: Optional[bool] = None):
        """``threads``: ONNX Runtime's intra-op threads (default: the cores this process may use); ``spinning``: let idle
        ones busy-wait (off: see ``create_session``); ``optimization``: graph optimisation level
        (``--ort-opt``, ``GRAPH_OPTIMIZATIONS``); ``io_binding``: default on for CUDA, off for CPU (where
        ``session.run`` on host arrays is what was measured fastest)."""
        from sfda_deploy.metadata import read_onnx_meta

        ort = import_onnxruntime()
        self.device = device
        found = file_meta(Path(path))
        quantization = quantization_of(found.extra) if found else None
        self.optimization, why = choose_optimization(
            check_graph_optimization(optimization), quantization, found.arch if found else None,
            tuple(imgsz or found.input_size) if found else None, device)
        self.session, self.providers = create_session(path, device, threads=default_threads(threads),
                                                      spinning=spinning, optimization=self.optimization)
        self.meta = read_onnx_meta(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.threads = self.session.get_session_options().intra_op_num_threads
        requested = requested_providers(device, ort.get_available_providers())
        self.notes = []
        if requested[0] not in self.providers:
            self.notes.append(f"asked ONNX Runtime for {requested[0]} but it runs on "
                              f"{', '.join(self.providers)} (silent fall-back)")
        note = int8_note(quantization, device)
        if note:
            self.notes.append(note)
        if why:
            self.notes.append(why)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.batch, self.input_size = resolve_shape(static_dims(inp.shape), self.meta, imgsz, batch, str(path))
        self.output_kind = "mask" if len(out.shape) == 3 else self.meta.extra.get("output", "logits")
        self.dtype = np.float16 if "float16" in inp.type else np.float32
        self._out_type = _ORT_TYPES.get(out.type, torch.float32)
        self.binding = is_cuda(device) if io_binding is None else io_binding
        self._tensor_device = device if self.binding else "cpu"
        channels = static_dims(out.shape)[1] if self.output_kind == "logits" else None
        if self.output_kind == "logits":
            if channels is None:  # symbolic after export (e.g. behind a Resize): one zero batch tells
                probe = np.zeros((self.batch, 3, *self.input_size), self.dtype)
                channels = self.session.run([self.output_name], {self.input_name: probe})[0].shape[1]
            check_classes(self.meta, channels, str(path))
        self._out_shape = (self.batch, channels, *self.input_size) if channels else (self.batch, *self.input_size)

    def preprocess(self, frames: np.ndarray):
        if self.binding:  # normalised on the device, bound to the session as it is
            x = torch_input(pad_batch(resize_batch(frames, self.input_size), self.batch), self.meta,
                            self._tensor_device)
            return x.to(torch.float16 if self.dtype == np.float16 else torch.float32).contiguous()
        x = self.meta.normalize_numpy(pad_batch(resize_batch(frames, self.input_size), self.batch))
        return x.astype(self.dtype, copy=False)

    def _bound_run(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run with inputs and outputs in ``self.device`` tensors; returns the output tensor."""
        dev = torch.device(self._tensor_device)
        kind, index = dev.type, dev.index or 0
        out = torch.empty(self._out_shape, dtype=self._out_type, device=dev)
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, kind, index, self.dtype, tuple(inputs.shape), inputs.data_ptr())
        binding.bind_output(self.output_name, kind, index, torch.empty((), dtype=self._out_type).numpy().dtype,
                            tuple(out.shape), out.data_ptr())
        if kind == "cuda":  # ONNX Runtime runs on its own stream: torch's writes to the input come first
            torch.cuda.current_stream(dev).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return out

    def infer(self, inputs) -> np.ndarray:
        if self.binding:
            return labels_from_output(self._bound_run(inputs), self.output_kind)  # argmax where the logits are
        (out,) = self.session.run([self.output_name], {self.input_name: inputs})
        # torch's argmax is multi-threaded; numpy's is not (19x1024x2048 logits: ~4x faster).
        return labels_from_output(torch.from_numpy(out), self.output_kind)

    def outputs(self, inputs) -> np.ndarray:
        if self.binding:
            return host_output(self._bound_run(inputs), self.output_kind)
        (out,) = self.session.run([self.output_name], {self.input_name: inputs})
        return host_output(torch.from_numpy(out), self.output_kind)

    def synchronize(self) -> None:  # both paths return once the outputs are ready
        pass

    def close(self) -> None:
        self.session = None
