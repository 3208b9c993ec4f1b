"""torch → ONNX: one self-contained opset-18 file with the model's metadata, and fp16 conversion.

Exporter choice. torch 2.13's default ``torch.onnx.export(..., dynamo=True)`` (torch.export +
onnxscript) is used. Compared with the TorchScript exporter (``dynamo=False``) on our models it
gives the graph TensorRT likes best: BatchNorm is folded into the convolutions by onnxscript's
optimizer, and a static export is a plain ``Conv/Relu/.../Resize[/ArgMax/Cast]`` chain with constant
Resize sizes, whereas the TorchScript exporter leaves ``Identity``, ``Shape→Gather→Unsqueeze→Concat``
chains feeding Resize (TensorRT then needs shape tensors even for a static engine) and it is
deprecated since torch 2.9. The dynamo exporter writes weights to an external ``<file>.data`` by
default; ``external_data=False`` keeps one file (our models are far below ONNX's 2 GB protobuf limit,
checked before export).

Mask output. ``--output mask`` appends ``ArgMax(axis=1)`` and casts its int64 indices (ONNX's ArgMax
type, which TensorRT handles poorly as a network output, so never left as the output type). TensorRT's
parser computes ArgMax with a TopK layer (INT32 indices) cast to the ONNX's INT64; ``int32`` (the
default) then casts INT64→INT32. ``uint8`` (classes < 256, a 4× smaller device→host copy) goes through
float16: TensorRT converts to UINT8 only from FLOAT/HALF (``DataType.UINT8``), so the graph casts
INT64→FLOAT16→UINT8 (class ids ≤ 255 are exact in fp16), which every TensorRT version accepts (the
TensorRT-RTX build test builds it).
"""
from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from sfda_deploy.disk import write_all
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural, say
from sfda_deploy.metadata import ModelMeta, attach_to_onnx

INPUT_NAME = "images"
OUTPUT_NAMES = {"logits": "logits", "mask": "mask"}
MASK_DTYPES = {"int32": torch.int32, "uint8": torch.uint8}
PROTOBUF_LIMIT = 2 * 1024**3  # bytes: above this ONNX needs external data


class MaskHead(nn.Module):
    """Wraps a segmentation model so the graph ends in a label map.

    forward: images ``[B,3,H,W]`` normalized → labels ``[B,H,W]`` (int32 or uint8).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = self.model(x).argmax(1)
        if self.dtype == torch.uint8:  # TensorRT casts to UINT8 only from FLOAT/HALF (module docstring)
            labels = labels.to(torch.float16)
        return labels.to(self.dtype)


def check_imgsz(imgsz: tuple[int, int], stride: int) -> None:
    """``--imgsz`` must be a multiple of the output stride (else upsampling misaligns the logits)."""
    h, w = imgsz
    if h <= 0 or w <= 0 or h % stride or w % stride:
        fix_h, fix_w = (max(stride, round(v / stride) * stride) for v in (h, w))
        raise SfdaError(f"--imgsz {h} {w} is not divisible by the model's output stride {stride}: "
                        f"use e.g. --imgsz {fix_h} {fix_w}")


def export_module(model: nn.Module, imgsz: tuple[int, int], batch: int, dynamic: bool, opset: int,
                  output: str, mask_dtype: str = "int32"):
    """Trace ``model`` to an in-memory ONNX ModelProto (weights inside, no file written).

    Args:
        model: segmentation model in eval mode, ``[B,3,H,W]`` → logits ``[B,C,H,W]``.
        imgsz: ``(H, W)`` of the example input (and of the static graph).
        batch: example/static batch size.
        dynamic: mark batch, height and width as dynamic dimensions.
        output: ``logits`` (``[B,C,H,W]`` float) or ``mask`` (``[B,H,W]`` label map).
    Returns:
        ``onnx.ModelProto``.
    """
    import onnx

    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size > PROTOBUF_LIMIT * 0.9:
        raise SfdaError(f"the model's weights take {size / 1e9:.1f} GB, too close to ONNX's 2 GB file limit "
                        "for a single self-contained file: export a smaller architecture")
    module = MaskHead(model, MASK_DTYPES[mask_dtype]) if output == "mask" else model
    module = module.eval()
    param = next(model.parameters(), None)  # the example lives where the weights do (--device cuda)
    example = torch.zeros(batch, 3, *imgsz, device=param.device if param is not None else "cpu")
    dynamic_shapes = None
    if dynamic:
        dims = {0: torch.export.Dim("batch", min=1, max=64), 2: torch.export.Dim.DYNAMIC,
                3: torch.export.Dim.DYNAMIC}
        dynamic_shapes = (dims,)
    proto = trace_to_onnx(module, example, dynamic_shapes, opset, OUTPUT_NAMES[output])
    if dynamic:
        name_dynamic_dims(proto)
    onnx.checker.check_model(proto)
    return proto


def trace_to_onnx(module: nn.Module, example: torch.Tensor, dynamic_shapes, opset: int, output_name: str):
    """``module`` (eval mode) traced by the dynamo exporter on ``example``: an in-memory ModelProto with the
    weights inside, input ``images``, output ``output_name``."""
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..." is noise for us
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
            program = torch.onnx.export(module, (example,), None, dynamo=True, external_data=False,
                                        opset_version=opset, input_names=[INPUT_NAME], output_names=[output_name],
                                        dynamic_shapes=dynamic_shapes, verbose=False)
    finally:
        quiet.setLevel(level)
    return program.model_proto


def name_dynamic_dims(proto) -> None:
    """Rename the exporter's symbolic dims (``s53``...) of the graph IO to batch/height/width."""
    names = {}
    for dim, name in zip(proto.graph.input[0].type.tensor_type.shape.dim, ("batch", None, "height", "width")):
        if name and dim.dim_param:
            names[dim.dim_param] = name
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def save_onnx(proto, meta: ModelMeta, path: Path) -> None:
    """Attach ``meta`` and serialize ``proto`` as ONE file at ``path`` (written as given, not atomically).

    Callers write to a temporary path and rename (``sfda_deploy.runs.atomic_path``).
    """
    import onnx

    attach_to_onnx(proto, meta)
    buffer = io.BytesIO()
    onnx.save_model(proto, buffer, save_as_external_data=False)
    write_all(path, buffer.getvalue())


def convert_fp16(src: Path, dst: Path, meta: ModelMeta) -> None:
    """fp32 ONNX → fp16 weights and compute, with fp32 inputs/outputs (onnxconverter-common).

    Keeping the IO in fp32 means every runtime feeds the same normalized float32 tensor and reads
    float32 logits; the converter inserts the two Casts. ``Resize`` and ``ArgMax`` run in fp16 too.
    """
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise SfdaError("--fp16 ONNX needs onnxconverter-common: pip install 'sfda-deploy[fp16]'") from None
    model = onnx.load(str(src))
    with warnings.catch_warnings(record=True) as caught:  # one "will be truncated" UserWarning per tensor
        warnings.simplefilter("always")
        half = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    truncated = [str(w.message) for w in caught if "will be truncated" in str(w.message)]
    for w in caught:
        if "will be truncated" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if truncated:
        say(f"fp16: {plural(len(truncated), 'weight value')} beyond fp16's range clamped to its nearest "
            f"({truncated[0].removeprefix('the float32 number ')}); the parity check measures the effect")
    save_onnx(half, meta, dst)
