"""What every model file carries: architecture, classes, input conventions, provenance.

The same record travels in a checkpoint's safetensors header, in an ONNX file's ``metadata_props``
and in an engine's sidecar JSON, so every command can start from the previous one's output alone.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sfda_deploy.classes import ClassSet, get_class_set
from sfda_deploy.errors import SfdaError

FORMAT = "sfda-deploy/1"

# Input conventions (0-255 scale), see docs/models.md.
NORMALIZATIONS = {
    # torchvision / DAFormer / ATP: RGB, ImageNet mean and std.
    "imagenet": {"channel_order": "RGB", "mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)},
    # AdaptSegNet lineage (LDBE, IAST, CPSL warm-ups): BGR, mean only, no std division.
    "caffe": {
        "channel_order": "BGR",
        "mean": (104.00698793, 116.66876762, 122.67891434),
        "std": (1.0, 1.0, 1.0),
    },
}


# What a model file's metadata must state (never assumed when read back): the class set and the input
# convention. Every file sfda-deploy writes has them (``to_dict`` writes every field).
REQUIRED_KEYS = ("class_set", "num_classes", "mean", "std", "channel_order")


@dataclass(frozen=True)
class ModelMeta:
    """Metadata of one model file.

    Attributes:
        arch: registry name of the architecture (``sfda_deploy.models``).
        class_set: class set name (``sfda_deploy.classes``).
        num_classes: output channels.
        mean, std: per-channel, 0-255 scale, in ``channel_order``.
        channel_order: ``RGB`` or ``BGR``: the order the network expects.
        input_size: ``(H, W)`` the model was trained / should run at.
        align_corners: how logits are upsampled to the input size.
        arch_kwargs: extra builder arguments (e.g. ``{"width": 1.0}``).
        provenance: one dict per command that produced or changed this model.
        extra: free-form fields (e.g. export settings).
    """

    arch: str
    class_set: str = "cityscapes19"
    num_classes: int = 19
    mean: tuple[float, float, float] = NORMALIZATIONS["imagenet"]["mean"]
    std: tuple[float, float, float] = NORMALIZATIONS["imagenet"]["std"]
    channel_order: str = "RGB"
    input_size: tuple[int, int] = (512, 1024)
    align_corners: bool = False
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    provenance: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    # ---- derived -------------------------------------------------------------------------
    @property
    def classes(self) -> ClassSet:
        return get_class_set(self.class_set)

    def with_provenance(self, **entry: Any) -> "ModelMeta":
        """A copy with one more provenance entry appended."""
        return dataclasses.replace(self, provenance=tuple(self.provenance) + (entry,))

    def replace(self, **changes: Any) -> "ModelMeta":
        return dataclasses.replace(self, **changes)

    # ---- preprocessing (the one place input conventions are applied) ------------------------
    def normalize(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """RGB images ``[B,3,H,W]`` (uint8 or float, 0-255) → network input (float32).

        A numpy image as image libraries give it, ``[H,W,3]`` or ``[B,H,W,3]`` RGB, is taken too (→ a torch
        batch ``[B,3,H,W]``; OpenCV reads BGR: ``image[..., ::-1]`` first). Reorders to BGR when the model
        expects it, then subtracts mean and divides by std.
        """
        if isinstance(images, np.ndarray):
            batch = images[None] if images.ndim == 3 else images
            if batch.ndim != 4 or batch.shape[-1] != 3:
                raise SfdaError(f"a numpy image must be RGB [H,W,3] or [B,H,W,3], got shape {images.shape}")
            images = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
        x = images.float()
        if self.channel_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def normalize_numpy(self, images: np.ndarray) -> np.ndarray:
        """RGB uint8 ``[B,H,W,3]`` → float32 ``[B,3,H,W]`` network input (for ONNX/TensorRT)."""
        x = images.astype(np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    # ---- serialization ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["format"] = FORMAT
        d["class_names"] = list(self.classes.names)
        d["palette"] = [list(c) for c in self.classes.palette]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the file") -> "ModelMeta":
        if not isinstance(d, dict) or "arch" not in d:
            raise SfdaError(
                f"{source} has no sfda-deploy metadata: re-create it with 'sfda-deploy export' or "
                "import the weights with 'sfda-deploy train-source'/'load_model' first"
            )
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:  # a default here would be a guess at the input convention: wrong guesses fail silently
            raise SfdaError(f"{source}'s metadata lacks {', '.join(missing)}: re-export it with 'sfda-deploy export' "
                            "(or re-import the weights with 'sfda-deploy import-pth ... --normalization')")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        for key in ("mean", "std", "input_size"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if "provenance" in kwargs:
            kwargs["provenance"] = tuple(kwargs["provenance"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str, source: str = "the file") -> "ModelMeta":
        try:
            d = json.loads(text)
        except (TypeError, ValueError):
            raise SfdaError(f"{source} has unreadable metadata (not JSON): re-export it") from None
        return cls.from_dict(d, source)


# ---- ONNX metadata_props: one key holds the whole record ---------------------------------------
ONNX_KEY = "sfda_deploy"


def attach_to_onnx(model_proto, meta: ModelMeta) -> None:
    """Store ``meta`` (JSON) in an ONNX ModelProto's ``metadata_props`` (replacing an older one).

    Export settings (``output``: logits|mask, ``input_name``, ``output_name``, ``dynamic``,
    ``imgsz``, ``batch``, ``precision``) go in ``meta.extra``. Class names and palette are also
    written as their own readable keys for tools that do not parse JSON, with the input ``layout``
    (``NCHW``: ``[batch, 3 channels in meta.channel_order, H, W]``).
    """
    readable = {"class_names": json.dumps(list(meta.classes.names)),
                "palette": json.dumps([list(c) for c in meta.classes.palette]),
                "layout": "NCHW"}
    keep = [p for p in model_proto.metadata_props if p.key != ONNX_KEY and p.key not in readable]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(keep)
    for key, value in ((ONNX_KEY, meta.to_json()), *readable.items()):
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_onnx_meta(props: dict[str, str], source: str) -> ModelMeta:
    """``ModelMeta`` from an ONNX file's metadata dict (e.g. ``session.get_modelmeta().custom_metadata_map``)."""
    if ONNX_KEY not in props:
        raise SfdaError(f"{source} carries no sfda-deploy metadata: re-export it with "
                        "'sfda-deploy export CKPT' (plain ONNX files lack classes, mean/std and size)")
    return ModelMeta.from_json(props[ONNX_KEY], source)


# ``extra["quantization"]`` of an INT8 ONNX: which runtime it was made for (export --int8-cpu / --int8)
CPU_INT8 = "cpu-int8"
TRT_QDQ = "trt-qdq"
QUANTIZATION_NAMES = {CPU_INT8: "INT8 for ONNX Runtime's CPU provider (QDQ, U8 activations, per-channel S8 weights)",
                      TRT_QDQ: "INT8 Q/DQ made for TensorRT (symmetric, fp16 remainder)"}


def quantization_of(extra: dict) -> str | None:
    """``cpu-int8`` / ``trt-qdq`` for an INT8 file's metadata extras, None for a float one.

    INT8 files exported before the CPU variant existed carry only ``precision: int8``: they are Q/DQ.
    """
    if extra.get("precision") != "int8":
        return None
    return extra.get("quantization", TRT_QDQ)
