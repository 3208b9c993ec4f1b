"""One inference protocol, three backends picked by file extension: torch (here), ONNX Runtime
(``runtime.ort``), TensorRT (``runtime.engine``).

Every backend turns a batch of RGB uint8 frames ``[B,H,W,3]`` into label maps ``[B,h,w]`` uint8 at the
model's input size ``(h, w)``. ``preprocess`` (resize + normalise, from the model's metadata) and
``infer`` (network + argmax + copy to host) are separate calls so the pipeline can time them apart.
Nothing else is needed from the user: classes, palette, mean/std, input size and output kind all come
from the model file's metadata.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional, Protocol

import cv2
import numpy as np
import torch

from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural
from sfda_deploy.runs import check_finished
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.threads import limit_torch_threads

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_BY_SUFFIX = {".safetensors": "torch", ".pth": "torch", ".pt": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}


class Backend(Protocol):
    """What the pipeline and the benchmark need from a model.

    Attributes:
        meta: the model's metadata (classes, palette, mean/std, ...).
        name: ``torch``, ``onnxruntime`` or ``tensorrt``.
        device: ``cpu`` or ``cuda:N``.
        input_size: ``(H, W)`` frames are resized to.
        batch: batch size the model runs at (smaller batches are padded).
        output_kind: ``logits`` (``[B,C,H,W]``, argmax here) or ``mask`` (``[B,H,W]`` ids).
        providers: execution providers / engines actually used.
        threads: CPU threads of the torch / ONNX Runtime backends (``--threads``; absent for TensorRT).
        notes: things the user must know (fall-backs, foreign engines), shown in the summary.
    """

    meta: ModelMeta
    name: str
    device: str
    input_size: tuple[int, int]
    batch: int
    output_kind: str
    providers: list[str]
    notes: list[str]

    def preprocess(self, frames: np.ndarray) -> Any:
        """RGB uint8 ``[B,H,W,3]`` (any H, W) → this backend's input at ``input_size``."""

    def infer(self, inputs: Any) -> np.ndarray:
        """Preprocessed batch → label maps uint8 ``[B,h,w]`` (host memory, work finished)."""

    def outputs(self, inputs: Any) -> np.ndarray:
        """Preprocessed batch → the network's own output on the host, for fidelity checks: logits
        float32 ``[B,C,h,w]`` or, for a mask model, label maps ``[B,h,w]``."""

    def close(self) -> None:
        """Release sessions, engines and device memory."""


# ------------------------------------------------------------------------------- helpers
def parse_device(device: str) -> str:
    """``cpu`` | ``cuda`` | ``cuda:N`` → canonical string; CUDA without a GPU is a user error."""
    device = (device or "cpu").strip().lower()
    if device == "cpu":
        return "cpu"
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise SfdaError(f"--device {device} was asked for but no CUDA GPU is visible to torch: "
                            "use --device cpu (or install a CUDA build of torch)")
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise SfdaError(f"--device {device}: only {plural(torch.cuda.device_count(), 'GPU')} here: "
                            f"pick cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return f"cuda:{index}"
    raise SfdaError(f"unknown device '{device}': use cpu, cuda or cuda:N")


def resize_batch(frames: np.ndarray | list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Frames (RGB uint8 ``[H,W,3]`` each, sizes may differ) → ``[B,h,w,3]`` at ``size`` (bilinear)."""
    h, w = size
    out = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
           for f in frames]
    return np.ascontiguousarray(np.stack(out))


def pad_batch(x, n: int):
    """Repeat the last item so a static-batch model gets exactly ``n`` items (numpy or torch)."""
    if x.shape[0] >= n:
        return x
    reps = [x[-1:]] * (n - x.shape[0])
    return np.concatenate([x, *reps]) if isinstance(x, np.ndarray) else torch.cat([x, *reps])


def labels_from_output(out: torch.Tensor, kind: str) -> np.ndarray:
    """Network output → uint8 label maps on the host. Logits ``[B,C,H,W]``; masks ``[B,H,W]`` or ``[B,1,H,W]``."""
    if kind == "logits" and out.dim() == 4 and out.shape[1] > 1:
        out = out.argmax(1)
    elif out.dim() == 4:
        out = out[:, 0]
    return out.to(torch.uint8).cpu().numpy()


def host_output(out: torch.Tensor, kind: str) -> np.ndarray:
    """Network output → host numpy: logits as float32 ``[B,C,H,W]``, masks as ``[B,H,W]`` ids."""
    if kind == "mask" and out.dim() == 4:
        out = out[:, 0]
    return out.float().cpu().numpy() if out.is_floating_point() else out.cpu().numpy()


def check_classes(meta: ModelMeta, channels: Optional[int], source: str) -> None:
    """The model's output channels, its metadata and its class set must agree (else labels are wrong)."""
    if meta.num_classes != meta.classes.num_classes:
        raise SfdaError(f"{source} declares {meta.num_classes} classes but its class set {meta.class_set} "
                        f"has {meta.classes.num_classes}: re-export it with the right --class-set")
    if channels is not None and channels != meta.num_classes:
        raise SfdaError(f"{source} outputs {channels} channels but its metadata says {meta.num_classes} "
                        f"classes ({meta.class_set}): re-export it from the matching checkpoint")


def set_cpu_threads(threads: Optional[int]) -> None:
    """Cap torch's intra-op CPU threads (process-wide); ``None``: at most the cores this process may use.

    Both backends need it: torch runs the network, and ONNX Runtime's logits go through torch's
    (multi-threaded) argmax.
    """
    if threads is None:
        limit_torch_threads()  # the cores this process may use, not the machine's
        return
    if threads < 1:
        raise SfdaError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


@contextlib.contextmanager
def ieee_fp32():
    """float32 convolutions and matmuls in full IEEE fp32 inside the block, TF32 off (restored after).

    torch runs cuDNN convolutions in TF32 by default on Ampere and later (10-bit mantissas); an "fp32"
    reference must not, or parity gates compare an fp32 engine against TF32 arithmetic.
    """
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


def torch_input(frames: np.ndarray, meta: ModelMeta, device: str) -> torch.Tensor:
    """RGB uint8 ``[B,H,W,3]`` → normalised float ``[B,3,H,W]`` on ``device`` (uint8 crosses the bus)."""
    x = torch.from_numpy(frames).to(device, non_blocking=device != "cpu").permute(0, 3, 1, 2)
    return meta.normalize(x)


# --------------------------------------------------------------------------------- torch
class TorchBackend:
    """A torch model: eval + no_grad; on CUDA optionally fp16 autocast, channels_last and CUDA graphs.

    Args:
        model: a ``sfda_deploy.models`` network (moved to ``device`` and put in eval mode here).
        meta: its metadata.
        device: ``cpu`` or ``cuda:N`` (canonical, see ``parse_device``).
        imgsz: ``(H, W)`` to run at (default: ``meta.input_size``).
        batch: batch size (smaller batches are padded).
        half, channels_last, cuda_graphs: CUDA speed-ups (ignored on CPU); all on by default.
        fold_bn: on CPU, fold each BatchNorm into the convolution before it (``runtime.fusion``).
        tf32: let float32 convolutions use TF32 (torch's default); off for fidelity references.
    """

    name = "torch"
    output_kind = "logits"

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, device: str,
                 imgsz: Optional[tuple[int, int]] = None, batch: int = 1, *, half: bool = True,
                 channels_last: bool = True, cuda_graphs: bool = True, fold_bn: bool = True, tf32: bool = True):
        device = str(device)  # a torch.device works too (library callers pass one)
        self.device, self.meta, self.batch = device, meta, batch
        self.tf32 = tf32
        self.model = model.to(device).eval()
        self.input_size = tuple(imgsz or meta.input_size)
        self.notes: list[str] = []
        self.cuda = device.startswith("cuda")
        self.half = half and self.cuda
        self.channels_last = channels_last and self.cuda
        folded = 0
        if fold_bn and not self.cuda:  # CPU only: the CUDA paths (graphs, fp16) run the model as loaded
            from sfda_deploy.runtime.fusion import fold_conv_bn

            self.model, folded = fold_conv_bn(self.model)
        modes = [m for m, on in (("fp16 autocast", self.half), ("channels_last", self.channels_last),
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


# -------------------------------------------------------------------------- ONNX Runtime
def static_dims(shape) -> list[Optional[int]]:
    """ONNX Runtime shape → ints for fixed dims, None for symbolic/unknown ones."""
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


def resolve_shape(dims: list[Optional[int]], meta: ModelMeta, imgsz, batch: int, source: str):
    """(batch, (H, W)) to run a model whose input is ``[B,3,H,W]`` with these fixed/free dims.

    A fixed dimension wins over the default; a flag that contradicts it is a user error.
    """
    if len(dims) != 4 or dims[1] not in (3, None):
        shown = "x".join("?" if d is None else str(d) for d in dims) or "a scalar"
        raise SfdaError(f"{source} takes an input of shape {shown}, not [B,3,H,W] (a batch of RGB images): "
                        "pass a segmentation model exported with 'sfda-deploy export'")
    fixed_b, fixed_h, fixed_w = dims[0], dims[2], dims[3]
    default = tuple(meta.extra.get("imgsz") or meta.input_size)
    size = (fixed_h or default[0], fixed_w or default[1])
    if imgsz is not None and ((fixed_h and fixed_h != imgsz[0]) or (fixed_w and fixed_w != imgsz[1])):
        raise SfdaError(f"--imgsz {imgsz[0]} {imgsz[1]} does not fit {source}, exported with a static "
                        f"input of {size[0]}x{size[1]}: drop --imgsz or re-export with "
                        "'sfda-deploy export CKPT --dynamic' (or --imgsz H W)")
    if imgsz is not None:
        size = (fixed_h or imgsz[0], fixed_w or imgsz[1])
    if fixed_b and batch > fixed_b:
        raise SfdaError(f"--batch {batch} does not fit {source}, exported with a static batch of "
                        f"{fixed_b}: use --batch {fixed_b} or re-export with --dynamic")
    return (fixed_b or batch), size


# ------------------------------------------------------------------------------ factory
def resolve_model_path(model: Optional[str]) -> Path:
    """``--model`` or, without it, the bundled demo model (a clear error if this install lacks it)."""
    if model is None:
        from sfda_deploy.messages import BUNDLED_MODEL as DEMO_MODEL  # one definition of the bundled model

        if not DEMO_MODEL.is_file():
            raise SfdaError(f"no --model given and the bundled demo model {DEMO_MODEL.name} is missing "
                            "from this install: pass --model FILE (.safetensors, .onnx or .engine)")
        return DEMO_MODEL
    path = Path(model)
    if not path.is_file():
        raise SfdaError(f"model {path} does not exist: pass a .safetensors checkpoint, an .onnx or an .engine")
    check_finished(path)
    return path


# what each backend runs, and how a user gets such a file from a checkpoint
_FILES_OF = {"torch": (".safetensors checkpoint", "the checkpoint adapt/train-source wrote"),
             "onnxruntime": (".onnx file", "sfda-deploy export CKPT"),
             "tensorrt": (".engine file (and a CUDA GPU with TensorRT)",
                          "sfda-deploy export CKPT --trt on a machine with an NVIDIA GPU and TensorRT")}


def backend_for(path: Path, backend: str) -> str:
    """The backend ``auto`` picks for this file (by extension), or the one asked for if it runs this file."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise SfdaError(f"unknown backend '{backend}': choose auto, {', '.join(BACKENDS)}")
        kind = _BY_SUFFIX.get(path.suffix.lower())
        if kind is not None and kind != backend:
            needs, make = _FILES_OF[backend]
            raise SfdaError(f"--backend {backend} needs a {needs}, not {path.name}: make one with '{make}', or "
                            f"drop --backend ({path.suffix} files run on {kind})")
        return backend
    try:
        return _BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise SfdaError(f"cannot tell the backend of {path.name} from its extension: use .safetensors "
                        "(torch), .onnx (onnxruntime) or .engine (tensorrt), or pass --backend") from None


def faster_on_cpu_note(kind: str, device: str, adaptable: bool) -> Optional[str]:
    """What runs a checkpoint faster on CPU, when torch runs it there and nothing needs torch (``--adapt``).

    torch is the only backend that runs a checkpoint as it is; on CPU ONNX Runtime runs the exported
    file faster (scripts/cpu_int8.py, 1 thread, alternated: torch with BatchNorm folded at 0.56-0.63×
    the fp32 ONNX for mobilenetv2_aspp at 512x1024 and 1024x2048; the INT8 CPU file 2.06-2.21× the fp32
    ONNX), so the user is told how to get those files.
    """
    if kind != "torch" or device != "cpu" or adaptable:
        return None
    return ("on CPU ONNX Runtime runs this net faster than torch (fp32 ONNX 1.6-1.8×, INT8 3.3-4× for "
            "mobilenetv2_aspp, docs/benchmark.md): sfda-deploy export CKPT --int8-cpu --calib-data TARGET_FRAMES, then "
            "--model model_int8_cpu.onnx (or model.onnx)")


def load_backend(model: Optional[str], backend: str = "auto", device: str = "cpu",
                 imgsz: Optional[tuple[int, int]] = None, batch: int = 1,
                 threads: Optional[int] = None, ort_opt: str = "auto", adaptable: bool = False) -> Backend:
    """Open a model file with the right backend. All problems are one-line ``SfdaError``s.

    ``threads`` caps the CPU threads of torch (process-wide) and of ONNX Runtime's session; ``None``
    lets each use the cores this process may use. ``ort_opt``: ONNX Runtime's graph optimisation level (``--ort-opt``).
    ``adaptable``: a torch model whose weights will change while it runs (``segment --adapt``): its
    BatchNorms stay unfolded and no CUDA graph is captured.
    """
    set_cpu_threads(threads)
    if batch < 1:
        raise SfdaError(f"--batch must be >= 1, got {batch}")
    if imgsz is not None and (len(imgsz) != 2 or min(imgsz) < 8):
        raise SfdaError(f"--imgsz takes H W of at least 8 pixels, got {imgsz}")
    path = resolve_model_path(model)
    kind = backend_for(path, backend)
    if kind == "tensorrt":
        from sfda_deploy.runtime.engine import TensorRTBackend

        return TensorRTBackend(path, device, imgsz, batch)
    if kind == "torch":
        device = parse_device(device)
        options = {"fold_bn": False, "cuda_graphs": False} if adaptable else {}
        loaded = TorchBackend.load(path, device, tuple(imgsz) if imgsz else None, batch, **options)
        note = faster_on_cpu_note(kind, device, adaptable)
        if note:
            loaded.notes.append(note)
        return loaded
    from sfda_deploy.runtime.ort import OrtBackend

    device = (device or "cpu").strip().lower()
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise SfdaError(f"unknown device '{device}': use cpu, cuda or cuda:N")
    return OrtBackend(path, device, tuple(imgsz) if imgsz else None, batch, threads=threads, optimization=ort_opt)


def describe(backend: Backend) -> dict[str, Any]:
    """The backend as the summary reports it."""
    return {"backend": backend.name, "device": backend.device, "providers": list(backend.providers),
            "input_size": list(backend.input_size), "batch": backend.batch,
            "output": backend.output_kind, "arch": backend.meta.arch,
            "class_set": backend.meta.class_set, "threads": getattr(backend, "threads", None),
            "ort_optimization": getattr(backend, "optimization", None),
            "notes": list(backend.notes)}
