"""One inference protocol and the factory that opens a model file with its backend, picked by file
extension: torch (``runtime.torch_backend``), ONNX Runtime (``runtime.ort``), TensorRT (``runtime.engine``);
what they share is in ``runtime.io``.

Every backend turns a batch of RGB uint8 frames ``[B,H,W,3]`` into label maps ``[B,h,w]`` uint8 at the
model's input size ``(h, w)``. ``preprocess`` (resize + normalise, from the model's metadata) and
``infer`` (network + argmax + copy to host) are separate calls so the pipeline can time them apart.
Nothing else is needed from the user: classes, palette, mean/std, input size and output kind all come
from the model file's metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from sfda_deploy.assets import BUNDLED_MODEL
from sfda_deploy.device import cpu_native_bf16, device_name, parse_device
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.run_folders import check_not_resume_state, model_in_run
from sfda_deploy.runs import check_finished
from sfda_deploy.runtime.io import set_cpu_threads
from sfda_deploy.runtime.torch_backend import REFERENCE_OPTIONS, TorchBackend

BACKENDS = ("torch", "onnxruntime", "tensorrt")
_BY_SUFFIX = {".safetensors": "torch", ".pth": "torch", ".pt": "torch", ".onnx": "onnxruntime",
              ".engine": "tensorrt", ".plan": "tensorrt"}


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
    kind = backend_for(path, backend)
    if kind == "tensorrt":
        from sfda_deploy.runtime.engine import TensorRTBackend

        return TensorRTBackend(path, device, imgsz, batch)
    if kind == "torch":
        device = parse_device(device)
        options = dict(REFERENCE_OPTIONS) if reference else {}
        if adaptable:
            options.update(fold_bn=False, cuda_graphs=False, cpu_bf16=False)
        loaded = TorchBackend.load(path, device, tuple(imgsz) if imgsz else None, batch, **options)
        note = None if reference else faster_on_cpu_note(kind, device, adaptable)  # a reference is not deployed
        if note:
            loaded.notes.append(note)
        return loaded
    from sfda_deploy.runtime.ort import OrtBackend

    device = device_name(device)  # ONNX Runtime picks (and verifies) its own providers
    return OrtBackend(path, device, tuple(imgsz) if imgsz else None, batch, threads=threads, optimization=ort_opt)


def describe(backend: Backend) -> dict[str, Any]:
    """The backend as the summary reports it."""
    return {"backend": backend.name, "device": backend.device, "providers": list(backend.providers),
            "input_size": list(backend.input_size), "batch": backend.batch,
            "output": backend.output_kind, "arch": backend.meta.arch,
            "class_set": backend.meta.class_set, "threads": getattr(backend, "threads", None),
            "ort_optimization": getattr(backend, "optimization", None),
            "notes": list(backend.notes)}
