"""The serving graph: 0–255 RGB frames in, the model's own normalisation inside the graph.

DeepStream's nvinfer and a Triton client hand the network plain pixels; nvinfer can only apply one
scalar scale and per-channel offsets (``y = net-scale-factor * (x - offsets)``), not a per-channel
std. So the graph exported for them does ``meta.normalize`` itself (channel order, mean, std) and the
runtime feeds float 0–255 RGB (nvinfer: ``net-scale-factor=1``, ``offsets=0;0;0``, RGB).

Heads: ``scores`` (softmax class scores, FP32 ``[B,C,H,W]`` at the input size: what nvinfer's
segmentation output and its ``segmentation-threshold`` expect), ``logits`` or ``mask`` (the export's
``--output``). The batch is always dynamic (Triton's dynamic batcher, nvinfer's ``batch-size``);
height and width are dynamic for a ``--dynamic`` export.

These files carry no sfda-deploy metadata on purpose: ``segment`` normalises before the network and
would normalise twice, so it refuses them as plain ONNX files; what a client needs (classes, sizes) is
written beside them by each target (labels.txt, Triton's config parameters).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sfda_deploy.errors import SfdaError
from sfda_deploy.export.onnx import INPUT_NAME, MASK_DTYPES, MaskHead, name_dynamic_dims, trace_to_onnx
from sfda_deploy.metadata import ModelMeta

HEADS = ("scores", "logits", "mask")
MAX_BATCH = 64  # the dynamic batch dimension's upper bound in the graph


class RawInputModel(nn.Module):
    """``[B,3,H,W]`` float 0–255 RGB → the model's output with ``meta.normalize`` applied inside."""

    def __init__(self, model: nn.Module, meta: ModelMeta, head: str, mask_dtype: str = "int32"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head {head!r}: use one of {HEADS}")
        self.net = MaskHead(model, MASK_DTYPES[mask_dtype]) if head == "mask" else model
        self.head = head
        self.bgr = meta.channel_order == "BGR"
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        out = self.net((x - self.mean) / self.std)
        return out.softmax(1) if self.head == "scores" else out


def export_raw_input(model: nn.Module, meta: ModelMeta, imgsz: tuple[int, int], head: str, dynamic_hw: bool,
                     opset: int, path: Path, mask_dtype: str = "int32", output_name: str | None = None) -> None:
    """Write the serving graph of ``model`` to ``path`` (one self-contained file; dynamic batch).

    Args:
        head: ``scores``, ``logits`` or ``mask``; the output tensor is named ``output_name`` (default: the head).
        dynamic_hw: free height and width (``--dynamic``), else fixed at ``imgsz``.
    """
    import onnx

    module = RawInputModel(model, meta, head, mask_dtype).eval()
    param = next(model.parameters(), None)
    example = torch.full((2, 3, *imgsz), 128.0, device=param.device if param is not None else "cpu")
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}  # example batch 2: size-1 dims get specialised
    if dynamic_hw:
        dims.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    proto = trace_to_onnx(module, example, (dims,), opset, output_name or head)
    name_dynamic_dims(proto)
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def reference_outputs(model: nn.Module, meta: ModelMeta, images: np.ndarray, head: str) -> np.ndarray:
    """What the serving graph must give for uint8 RGB ``images`` ``[N,H,W,3]``: the torch path (normalise
    outside the network, fp32), as scores, logits or a label map."""
    param = next(model.parameters(), None)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(meta.normalize(x.to(param.device if param is not None else "cpu"))).float().cpu()
    if head == "scores":
        return logits.softmax(1).numpy()
    return logits.argmax(1).numpy() if head == "mask" else logits.numpy()


def check_raw_input(path: Path, model: nn.Module, meta: ModelMeta, images: np.ndarray, head: str,
                    title: str) -> dict:
    """Parity of the serving graph at ``path`` (ONNX Runtime, CPU) against the torch path on ``images``.

    Returns:
        ``{"argmax_agreement": %, "max_abs_diff": float or None, "frames": N}``.
    Raises:
        SfdaError: fewer than ``AGREEMENT_GATE`` % of the pixels agree (a broken export).
    """
    from sfda_deploy.export.verify import AGREEMENT_GATE
    from sfda_deploy.onnxrt import create_session

    session, _ = create_session(str(path), "cpu")
    agree = pixels = 0
    max_abs = 0.0
    for image in images:
        want = reference_outputs(model, meta, image[None], head)
        got = session.run(None, {INPUT_NAME: image[None].transpose(0, 3, 1, 2).astype(np.float32)})[0]
        want_labels, got_labels = (want, got) if head == "mask" else (want.argmax(1), got.argmax(1))
        agree += int((want_labels == got_labels.astype(want_labels.dtype)).sum())
        pixels += want_labels.size
        if head != "mask":
            max_abs = max(max_abs, float(np.abs(want.astype(np.float64) - got).max()))
    result = {"argmax_agreement": 100.0 * agree / max(pixels, 1), "max_abs_diff": None if head == "mask" else max_abs,
              "frames": len(images)}
    if result["argmax_agreement"] < AGREEMENT_GATE:
        raise SfdaError(f"{title} agrees with torch on only {result['argmax_agreement']:.4f}% of pixels "
                        f"(< {AGREEMENT_GATE}%): the export is not faithful; report the architecture")
    return result
