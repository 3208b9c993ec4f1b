"""The torch backend: a checkpoint run as it is (eval + no_grad), with CUDA speed-ups where there is a GPU."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from sfda_deploy.device import cpu_native_bf16, is_cuda
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.runtime.io import check_classes, host_output, ieee_fp32, pad_batch, resize_batch, torch_input

# The fp32 reference export and verify compare against: no autocast, no CUDA graphs, BatchNorm not folded,
# TF32 off (the checkpoint's own arithmetic in IEEE fp32, as the engines are built).
REFERENCE_OPTIONS = {"half": False, "channels_last": False, "cuda_graphs": False, "fold_bn": False, "tf32": False,
                     "cpu_bf16": False}


class TorchBackend:
    """A torch model: eval + no_grad; on CUDA optionally fp16 autocast, channels_last and CUDA graphs; on a CPU
    with native bf16, bf16 autocast and channels_last.

    Args:
        model: a ``sfda_deploy.models`` network (moved to ``device`` and put in eval mode here).
        meta: its metadata.
        device: ``cpu`` or ``cuda:N`` (canonical, see ``sfda_deploy.device.parse_device``).
        imgsz: ``(H, W)`` to run at (default: ``meta.input_size``).
        batch: batch size (smaller batches are padded).
        half, channels_last, cuda_graphs: CUDA speed-ups (ignored on CPU); all on by default.
        fold_bn: on CPU, fold each BatchNorm into the convolution before it (``runtime.fusion``).
        tf32: let float32 convolutions use TF32 (torch's default); off for fidelity references.
        cpu_bf16: on CPU, bfloat16 autocast with channels_last. None (default): on where the CPU multiplies
            bf16 in hardware (``device.cpu_native_bf16``: AVX-512 BF16 or AMX). Measured on an AVX-512 BF16
            EPYC (scripts/cpu_torch_variants.py, docs/benchmark.md): 2.3-2.9x faster than fp32 for
            mobilenetv2_aspp, 99.7 % pixel agreement, ΔmIoU +0.05. Off for the fp32 reference and for
            ``segment --adapt`` (its updates are fp32).
    """

    name = "torch"
    output_kind = "logits"

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, device: str,
                 imgsz: Optional[tuple[int, int]] = None, batch: int = 1, *, half: bool = True,
                 channels_last: bool = True, cuda_graphs: bool = True, fold_bn: bool = True, tf32: bool = True,
                 cpu_bf16: Optional[bool] = None):
        device = str(device)  # a torch.device works too (library callers pass one)
        self.device, self.meta, self.batch = device, meta, batch
        self.tf32 = tf32
        self.model = model.to(device).eval()
        self.input_size = tuple(imgsz or meta.input_size)
        self.notes: list[str] = []
        self.cuda = is_cuda(device)
        self.half = half and self.cuda
        self.bf16 = not self.cuda and (cpu_native_bf16() if cpu_bf16 is None else cpu_bf16)
        self.channels_last = (channels_last and self.cuda) or self.bf16  # bf16 measured with channels_last
        folded = 0
        if fold_bn and not self.cuda:  # CPU only: the CUDA paths (graphs, fp16) run the model as loaded
            from sfda_deploy.runtime.fusion import fold_conv_bn

            self.model, folded = fold_conv_bn(self.model)
        modes = [m for m, on in (("fp16 autocast", self.half), ("bf16 autocast", self.bf16),
                                 ("channels_last", self.channels_last),
                                 ("CUDA graphs", cuda_graphs and self.cuda),
                                 (f"{folded} BatchNorms folded", folded)) if on]
        self.providers = [f"torch {torch.__version__} on {device}" + (f" ({', '.join(modes)})" if modes else "")]
        self.threads = torch.get_num_threads()  # CPU threads (``set_cpu_threads``), for the summary
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._graphs = cuda_graphs and self.cuda
        self._graph = None

    @classmethod
    def load(cls, path: Path, device: str, imgsz: Optional[tuple[int, int]] = None, batch: int = 1,
             **options) -> "TorchBackend":
        """Open a checkpoint (``.safetensors``; legacy ``.pth`` must be imported first)."""
        from sfda_deploy.checkpoint import load_model

        model, meta = load_model(path, device)
        check_classes(meta, None, str(path))  # the strict weight load already checked the channels
        return cls(model, meta, device, imgsz, batch, **options)

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        x = torch_input(pad_batch(resize_batch(frames, self.input_size), self.batch), self.meta, self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        # cache_enabled=False: cached fp16 weight casts would be freed memory inside a CUDA graph.
        with torch.no_grad(), torch.autocast("cuda", torch.float16, enabled=self.half, cache_enabled=False), \
                torch.autocast("cpu", torch.bfloat16, enabled=self.bf16), \
                (contextlib.nullcontext() if self.tf32 else ieee_fp32()):
            return self.model(x)

    def _on_device(self):
        """This backend's GPU as the current device (streams, graphs and kernels of ``cuda:N`` go to N)."""
        return torch.cuda.device(self.device) if self.cuda else contextlib.nullcontext()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x).argmax(1).to(torch.uint8)

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        """Run through a CUDA graph captured for this static input shape (re-captured if it changes)."""
        if self._graph is None or self._static_in.shape != x.shape:
            self._static_in = x.clone()
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside the graph (cuDNN autotuning, allocations)
                for _ in range(3):
                    self._forward(self._static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._static_out = self._forward(self._static_in)
            self._graph = graph
        self._static_in.copy_(x)
        self._graph.replay()
        return self._static_out

    def infer(self, inputs: torch.Tensor) -> np.ndarray:
        with self._on_device():
            if self._graphs:
                try:
                    return self._replay(inputs).cpu().numpy()
                except RuntimeError as e:  # a model with host syncs cannot be captured: run eagerly
                    self._graphs, self._graph = False, None
                    self.notes.append(f"CUDA graph capture failed ({str(e).splitlines()[0][:120]}); ran eagerly")
            return self._forward(inputs).cpu().numpy()

    def outputs(self, inputs: torch.Tensor) -> np.ndarray:
        with self._on_device():
            return host_output(self._logits(inputs), "logits")  # eager: fidelity checks are not timed runs

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._graph = self.model = None
