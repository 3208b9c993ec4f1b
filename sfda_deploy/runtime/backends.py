"""One inference protocol and the factory that opens a model file with its backend, picked by file
extension: torch (``runtime.torch_backend``), ONNX Runtime (``runtime.ort``), TensorRT (``runtime.engine``);
what they share is in ``runtime.io``. Backends are registered (``BACKEND_KINDS``, ``register_backend``): a
name, the file suffixes it runs, and how to open a file; ``--backend``'s names and errors come from there.

Every backend turns a batch of RGB uint8 frames ``[B,H,W,3]`` into label maps ``[B,h,w]`` uint8 at the
model's input size ``(h, w)``. ``preprocess`` (resize + normalise, from the model's metadata) and
``infer`` (network + argmax + copy to host) are separate calls so the pipeline can time them apart.
Nothing else is needed from the user: classes, palette, mean/std, input size and output kind all come
from the model file's metadata.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np

from sfda_deploy.assets import BUNDLED_MODEL
from sfda_deploy.device import cpu_native_bf16, device_name, parse_device
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.run_folders import check_not_resume_state, model_in_run
from sfda_deploy.runs import check_finished
from sfda_deploy.runtime.io import set_cpu_threads
from sfda_deploy.runtime.torch_backend import REFERENCE_OPTIONS, TorchBackend


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


# ------------------------------------------------------------------------------ factory
def latest_model(device: str = "cpu", adaptable: bool = False) -> tuple[Optional[Path], str]:
    """What runs when no model is named (``segment`` without ``--model``): the latest finished export (its
    engine on a GPU where it has one, else its fp32 ONNX), else the latest adapt run's model, else None
    (the bundled demo model); with the line that says which. ``adaptable`` (``--adapt``, torch only) skips
    exports. The line is empty for the bundled model."""
    from sfda_deploy.run_folders import describe_run_time, latest_run

    engine = device_name(device) != "cpu"
    export = None if adaptable else latest_run("export", ("model.onnx",) + (("model.engine",) if engine else ()))
    if export is not None:
        path = model_in_run(export, engine=engine)
        return path, f"no --model: the latest export, {path} from {describe_run_time(export)}; pass --model to choose"
    adapted = latest_run("adapt")
    if adapted is not None:
        path = adapted / "model.safetensors"
        return path, (f"no --model and no export yet: the latest adapt run's model, {path} from "
                      f"{describe_run_time(adapted)}; pass --model to choose")
    return None, ""  # the bundled model: the backend's own line says so (``segment.describe_run``)


def resolve_model_path(model: Optional[str], engine: bool = False) -> Path:
    """``--model`` (a run directory stands for its model file, ``engine``: an export's engine first) or,
    without it, the bundled demo model (a clear error if this install lacks it)."""
    if model is None:
        if not BUNDLED_MODEL.is_file():
            raise SfdaError(f"no --model given and the bundled demo model {BUNDLED_MODEL.name} is missing "
                            "from this install: pass --model FILE (.safetensors, .onnx or .engine)")
        return BUNDLED_MODEL
    path = model_in_run(model, engine=engine)
    check_not_resume_state(path)
    if not path.is_file():
        raise SfdaError(f"model {path} does not exist: pass a .safetensors checkpoint, an .onnx or an .engine")
    check_finished(path)
    return path


# what each backend runs, and how a user gets such a file from a checkpoint
@dataclass(frozen=True)
class BackendKind:
    """A registered backend.

    Attributes:
        name: ``--backend``'s value.
        suffixes: the file suffixes it runs (the first names the file in messages); ``auto`` picks by them.
        needs / make: what file it needs and how to make one (for the error when another file is given).
        open: ``open(path, device, imgsz, batch, options) -> Backend``, ``options`` being ``load_backend``'s
            ``threads``, ``ort_opt``, ``adaptable`` and ``reference``.
    """

    name: str
    suffixes: tuple[str, ...]
    needs: str
    make: str
    open: Callable[..., Backend]


BACKEND_KINDS: dict[str, BackendKind] = {}


def register_backend(kind: BackendKind) -> None:
    """Make ``kind`` a ``--backend`` (and ``auto``'s choice for its suffixes)."""
    BACKEND_KINDS[kind.name] = kind


def _kind_of_suffix(suffix: str) -> Optional[str]:
    return next((k.name for k in BACKEND_KINDS.values() if suffix.lower() in k.suffixes), None)


def backend_for(path: Path, backend: str) -> str:
    """The backend ``auto`` picks for this file (by extension), or the one asked for if it runs this file."""
    kind = _kind_of_suffix(path.suffix)
    if backend != "auto":
        if backend not in BACKEND_KINDS:
            raise SfdaError(f"unknown backend '{backend}': choose auto, {', '.join(BACKEND_KINDS)}")
        if kind is not None and kind != backend:
            asked = BACKEND_KINDS[backend]
            raise SfdaError(f"--backend {backend} needs a {asked.needs}, not {path.name}: make one with "
                            f"'{asked.make}', or drop --backend ({path.suffix} files run on {kind})")
        return backend
    if kind is None:
        known = ", ".join(f"{k.suffixes[0]} ({k.name})" for k in BACKEND_KINDS.values())
        raise SfdaError(f"cannot tell the backend of {path.name} from its extension: use {known}, or pass --backend")
    return kind


def faster_on_cpu_note(kind: str, device: str, adaptable: bool) -> Optional[str]:
    """What runs a checkpoint faster on CPU, when torch runs it there and nothing needs torch (``--adapt``).

    torch is the only backend that runs a checkpoint as it is. Measured for mobilenetv2_aspp at 512x1024, one
    thread, alternated (scripts/cpu_int8.py, docs/benchmark.md): fp32 ONNX 303 ms, INT8 CPU file 149 ms, torch
    with BatchNorm folded 439 ms in fp32 and 168 ms in bf16 (CPUs with native bf16, ``device.cpu_native_bf16``);
    at 1024x2048 1480 / 670 / 2562 / 916 ms. So on a bf16 CPU only the INT8 file is faster (1.1-1.4x); elsewhere
    both ONNX files are.
    """
    if kind != "torch" or device != "cpu" or adaptable:
        return None
    if cpu_native_bf16():
        return ("torch runs this checkpoint in bf16 on this CPU; ONNX Runtime's INT8 CPU file runs it 1.1-1.4× faster "
                "still (docs/benchmark.md): sfda-deploy export CKPT --int8-cpu --calib-data TARGET_FRAMES, then "
                "--model model_int8_cpu.onnx")
    return ("on CPU ONNX Runtime runs this net faster than torch (fp32 ONNX 1.6-1.8×, INT8 3.3-4× for "
            "mobilenetv2_aspp, docs/benchmark.md): sfda-deploy export CKPT --int8-cpu --calib-data TARGET_FRAMES, then "
            "--model model_int8_cpu.onnx (or model.onnx)")


def load_backend(model: Optional[str], backend: str = "auto", device: str = "cpu",
                 imgsz: Optional[tuple[int, int]] = None, batch: int = 1,
                 threads: Optional[int] = None, ort_opt: str = "auto", adaptable: bool = False,
                 reference: bool = False) -> Backend:
    """Open a model file with the right backend. All problems are one-line ``SfdaError``s.

    ``threads`` caps the CPU threads of torch (process-wide) and of ONNX Runtime's session; ``None``
    lets each use the cores this process may use. ``ort_opt``: ONNX Runtime's graph optimisation level (``--ort-opt``).
    ``adaptable``: a torch model whose weights will change while it runs (``segment --adapt``): its
    BatchNorms stay unfolded and no CUDA graph is captured. ``reference``: a torch model as the fp32
    reference export and verify compare against (``torch_backend.REFERENCE_OPTIONS``).
    """
    set_cpu_threads(threads)
    if batch < 1:
        raise SfdaError(f"--batch must be >= 1, got {batch}")
    if imgsz is not None and (len(imgsz) != 2 or min(imgsz) < 8):
        raise SfdaError(f"--imgsz takes H W of at least 8 pixels, got {imgsz}")
    path = resolve_model_path(model, engine=backend in ("auto", "tensorrt") and device_name(device) != "cpu")
    kind = BACKEND_KINDS[backend_for(path, backend)]
    options = {"threads": threads, "ort_opt": ort_opt, "adaptable": adaptable, "reference": reference}
    return kind.open(path, device, tuple(imgsz) if imgsz else None, batch, options)


def _open_torch(path: Path, device: str, imgsz, batch: int, options: dict) -> Backend:
    device = parse_device(device)
    settings = dict(REFERENCE_OPTIONS) if options["reference"] else {}
    if options["adaptable"]:
        settings.update(fold_bn=False, cuda_graphs=False, cpu_bf16=False)
    loaded = TorchBackend.load(path, device, imgsz, batch, **settings)
    # a reference is not deployed: no advice on what runs faster
    note = None if options["reference"] else faster_on_cpu_note("torch", device, options["adaptable"])
    if note:
        loaded.notes.append(note)
    return loaded


def _open_onnxruntime(path: Path, device: str, imgsz, batch: int, options: dict) -> Backend:
    from sfda_deploy.runtime.ort import OrtBackend

    # ONNX Runtime picks (and verifies) its own providers
    return OrtBackend(path, device_name(device), imgsz, batch, threads=options["threads"],
                      optimization=options["ort_opt"])


def _open_tensorrt(path: Path, device: str, imgsz, batch: int, options: dict) -> Backend:
    from sfda_deploy.runtime.engine import TensorRTBackend

    return TensorRTBackend(path, device, imgsz, batch)


for _kind in (
    BackendKind("torch", (".safetensors", ".pth", ".pt"), ".safetensors checkpoint",
                "the checkpoint adapt/train-source wrote", _open_torch),
    BackendKind("onnxruntime", (".onnx",), ".onnx file", "sfda-deploy export CKPT", _open_onnxruntime),
    BackendKind("tensorrt", (".engine", ".plan"), ".engine file (and a CUDA GPU with TensorRT)",
                "sfda-deploy export CKPT --trt on a machine with an NVIDIA GPU and TensorRT", _open_tensorrt),
):
    register_backend(_kind)


def describe(backend: Backend) -> dict[str, Any]:
    """The backend as the summary reports it."""
    return {"backend": backend.name, "device": backend.device, "providers": list(backend.providers),
            "input_size": list(backend.input_size), "batch": backend.batch,
            "output": backend.output_kind, "arch": backend.meta.arch,
            "class_set": backend.meta.class_set, "threads": getattr(backend, "threads", None),
            "ort_optimization": getattr(backend, "optimization", None),
            "notes": list(backend.notes)}
