"""Fidelity of one model file against another on the same frames: argmax agreement, |Δlogit|, ΔmIoU.

``Fidelity`` is the pure accumulator (arrays in, numbers out); ``_Runner`` opens a checkpoint, an ONNX
file or a TensorRT engine with its ``sfda_deploy.runtime.backends`` backend (the code ``segment`` runs)
as "uint8 RGB frames → network outputs"; the command is ``commands.verify.run_verify``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.metrics import ConfusionMatrix
from sfda_deploy.runtime.timing import median, relative_spread

AGREEMENT_GATE = 99.99  # % of pixels: an fp32 export below this is a broken export


class Fidelity:
    """Accumulates how far model B's outputs are from reference A's.

    ``update`` takes either logits ``[N,C,H,W]`` (float) or label maps ``[N,H,W]`` (int) for each side;
    |Δlogit| is only defined when both sides are logits.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.agree = 0
        self.pixels = 0
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.logit_count = 0
        self.cm_a = ConfusionMatrix(num_classes)
        self.cm_b = ConfusionMatrix(num_classes)
        self.labelled = False

    @staticmethod
    def _labels(out: np.ndarray) -> np.ndarray:
        return out.argmax(1) if out.ndim == 4 else out

    def update(self, a: np.ndarray, b: np.ndarray, labels: Optional[np.ndarray] = None) -> None:
        """Args: a, b: ``[N,C,H,W]`` logits or ``[N,H,W]`` labels; labels: ``[N,H,W]`` int64 (255 ignored)."""
        pred_a, pred_b = self._labels(a), self._labels(b)
        if pred_a.shape != pred_b.shape:
            raise SfdaError(f"the two models give outputs of different sizes {pred_a.shape} vs {pred_b.shape}: "
                            "compare models exported at the same --imgsz")
        self.agree += int((pred_a == pred_b).sum())
        self.pixels += pred_a.size
        if a.ndim == 4 and b.ndim == 4:
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.sum_abs += float(diff.sum())
            self.logit_count += diff.size
        if labels is not None:
            self.labelled = True
            self.cm_a.update(pred_a, labels)
            self.cm_b.update(pred_b, labels)

    def result(self, names: Sequence[str]) -> dict:
        """``argmax_agreement`` %, ``max_abs_diff``/``mean_abs_diff`` (None for masks), mIoU of each
        side and ``delta_miou`` = B − A (None without labels)."""
        out = {
            "pixels": self.pixels,
            "argmax_agreement": 100.0 * self.agree / self.pixels if self.pixels else float("nan"),
            "max_abs_diff": self.max_abs if self.logit_count else None,
            "mean_abs_diff": self.sum_abs / self.logit_count if self.logit_count else None,
            "miou_a": None, "miou_b": None, "delta_miou": None,
        }
        if self.labelled:
            out["miou_a"] = self.cm_a.result(names)["miou"]
            out["miou_b"] = self.cm_b.result(names)["miou"]
            out["delta_miou"] = round(out["miou_b"] - out["miou_a"], 2)
        return out


def format_fidelity(name: str, r: dict, on: str = "") -> str:
    """One readable line of a ``Fidelity.result``; ``on`` says what data it was measured on."""
    parts = [f"{name}: argmax agreement {r['argmax_agreement']:.4f}%"]
    if r["max_abs_diff"] is not None:
        parts.append(f"max |Δlogit| {r['max_abs_diff']:.2e}, mean {r['mean_abs_diff']:.2e}")
    if r["delta_miou"] is not None:
        parts.append(f"mIoU {r['miou_a']:.2f} → {r['miou_b']:.2f} (Δ {r['delta_miou']:+.2f})")
    return ", ".join(parts) + (f"; on {on}" if on else "")


# ---------------------------------------------------------------------------------- runners
class _Runner:
    """A model file opened with its ``sfda_deploy.runtime.backends`` backend, as
    ``run(images uint8 [N,H,W,3] RGB) → logits [N,C,H,W] float32 or labels [N,H,W]``, timed.

    Attributes:
        imgsz: the fixed ``(H, W)`` of a static export, None when any size runs (checkpoints, --dynamic).
    """

    def __init__(self, path: Path, backend):
        self.path, self.backend, self.meta = path, backend, backend.meta
        static = not self.meta.extra.get("dynamic", True)  # export records it; checkpoints have none
        self.imgsz = tuple(backend.input_size) if static else None
        self.seconds = 0.0
        self.images = 0
        self.per_image: list[float] = []  # seconds per image of each call

    def run(self, images: np.ndarray) -> np.ndarray:
        """Runs in chunks of the backend's batch (it pads the last one; the padding is dropped)."""
        step = self.backend.batch
        outs = []
        for i in range(0, len(images), step):
            chunk = images[i:i + step]
            start = time.perf_counter()
            out = self.backend.outputs(self.backend.preprocess(chunk))
            took = time.perf_counter() - start
            self.seconds += took
            self.images += len(chunk)
            self.per_image.append(took / len(chunk))
            outs.append(out[:len(chunk)])
        return np.concatenate(outs)

    @property
    def latency_ms(self) -> Optional[float]:
        """Median ms per image over the calls (None before any)."""
        return 1000 * median(self.per_image) if self.per_image else None

    @property
    def spread(self) -> Optional[float]:
        """``timing.relative_spread`` of the per-image times (None before any)."""
        return relative_spread(self.per_image) if self.per_image else None

    def close(self) -> None:
        self.backend.close()


def torch_runner(model, meta: ModelMeta, path: Path, device: str,
                 imgsz: Optional[tuple[int, int]] = None, **options) -> _Runner:
    """A loaded torch model as the fp32 reference (no autocast, no CUDA graphs, BatchNorm not folded,
    TF32 off: the checkpoint's own arithmetic in IEEE fp32, as the engines are built). ``options``
    override those ``TorchBackend`` settings (e.g. ``cpu_bf16=True`` to score the bf16 path against it)."""
    from sfda_deploy.device import parse_device
    from sfda_deploy.runtime.torch_backend import REFERENCE_OPTIONS, TorchBackend

    return _Runner(path, TorchBackend(model, meta, parse_device(device), imgsz, 1, **{**REFERENCE_OPTIONS, **options}))


def open_runner(path: Path | str, device: str = "cpu", imgsz: Optional[tuple[int, int]] = None) -> _Runner:
    """Open a checkpoint, an ``.onnx`` or an ``.engine`` with the runtime backend its extension names.

    Args:
        imgsz: ``(H, W)`` to run a dynamic model at (default: its metadata's size); must match a static one.
    """
    from sfda_deploy.runtime.backends import backend_for, load_backend

    path = Path(path)
    if not path.is_file():
        raise SfdaError(f"model {path} does not exist: pass a checkpoint, an .onnx or an .engine file")
    try:
        kind = backend_for(path, "auto")
    except SfdaError:
        raise SfdaError(f"{path} is not a model file sfda-deploy knows (.safetensors, .onnx, .engine): "
                        "pass one of those") from None
    return _Runner(path, load_backend(str(path), kind, device, imgsz, 1, reference=True))


def at_size(runner: _Runner, imgsz: tuple[int, int], device: str) -> _Runner:
    """``runner`` running at ``imgsz``: a model of free size is reopened there (backends bind it once)."""
    if tuple(runner.backend.input_size) == tuple(imgsz):
        return runner
    runner.close()
    return open_runner(runner.path, device, imgsz)


def compare_runners(a: _Runner, b: _Runner, images: np.ndarray, labels: Optional[np.ndarray],
                    batch: int = 1, desc: str = "verify") -> dict:
    """Feed the same frames to both, in turn (A, B, A, B, ...); ``Fidelity.result`` plus each side's median
    latency (ms per image) and its spread."""
    from sfda_deploy.progress import progress

    if a.meta.num_classes != b.meta.num_classes or a.meta.class_set != b.meta.class_set:
        raise SfdaError(f"{a.path} predicts {a.meta.class_set} ({a.meta.num_classes} classes) but {b.path} "
                        f"predicts {b.meta.class_set} ({b.meta.num_classes}): compare models of one class set")
    fid = Fidelity(a.meta.num_classes)
    for i in progress(range(0, len(images), batch), desc=desc, unit="batch"):
        chunk = images[i:i + batch]
        fid.update(a.run(chunk), b.run(chunk), None if labels is None else labels[i:i + batch])
    result = fid.result(a.meta.classes.names)
    result["latency_ms_a"], result["latency_ms_b"] = a.latency_ms, b.latency_ms
    result["spread_a"], result["spread_b"] = a.spread, b.spread
    return result
