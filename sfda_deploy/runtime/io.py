"""What every backend shares: frames resized and batched, outputs brought to the host, class checks,
CPU threads, and the input shape a model file allows.

Frames are RGB uint8 ``[B,H,W,3]``; outputs are logits ``[B,C,H,W]`` or masks ``[B,H,W]``.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import cv2
import numpy as np
import torch

from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.threads import limit_torch_threads


def resize_batch(frames: np.ndarray | list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Frames (RGB uint8 ``[H,W,3]`` each, sizes may differ) → ``[B,h,w,3]`` at ``size`` (bilinear)."""
    h, w = size
    out = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR)
           for f in frames]
    return np.ascontiguousarray(np.stack(out))


# A model run this much larger or smaller than the frames (per side), or at an aspect this far from theirs,
# scores differently from the size it was trained at: said once (evaluate, segment).
SIZE_MISMATCH_FACTOR = 1.5
ASPECT_MISMATCH = 0.15


def size_mismatch_note(frame: tuple[int, int], model: tuple[int, int],
                       recorded: Optional[tuple[int, int]] = None) -> Optional[str]:
    """One line when frames ``(H, W)`` differ much from the size ``(h, w)`` the model runs at (a side off by
    ``SIZE_MISMATCH_FACTOR`` or more, or the aspect by more than ``ASPECT_MISMATCH``); None otherwise.

    ``recorded``: the size the model records, when ``--imgsz`` chose another one to run at.
    """
    (fh, fw), (mh, mw) = (int(v) for v in frame), (int(v) for v in model)
    scale = max(fh / mh, mh / fh, fw / mw, mw / fw)
    aspect = abs((fw / fh) / (mw / mh) - 1)
    if scale < SIZE_MISMATCH_FACTOR and aspect <= ASPECT_MISMATCH:
        return None
    if recorded is not None and tuple(recorded) != (mh, mw):
        why = f"--imgsz; it records {recorded[0]}x{recorded[1]}"
    else:
        why = "the size it records: trained or exported at; --imgsz H W runs it at another"
    return f"the images are {fh}x{fw} and the model runs at {mh}x{mw} ({why}): each image is resized to it"


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
