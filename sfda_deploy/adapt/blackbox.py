"""A black-box source: a model reachable only through its predictions, here an ONNX file.

``BlackBoxTeacher`` wraps an ONNX Runtime session as a frozen teacher: a batch of target crops in,
teacher logits out (no gradient, batched, normalised as the file's metadata says). Nothing of the
source but its outputs is used: no weights, no architecture, no features. The student that learns
from it (``methods/distill.py``) is a registry model of the user's ``--arch``.

The file may be one of our exports (metadata carries class set, mean/std, channel order, input
size) or a plain ONNX file (then the caller names the class set and input convention). The
output may be logits ``[B,C,H,W]``, probabilities (detected: non-negative and summing to 1 over
C; their log is used) or a label map ``[B,H,W]`` (``--output mask`` exports; turned into
``log(one-hot)``, so distillation reduces to cross-entropy on the teacher's labels).
Static input shapes are honoured: crops are resized to the fixed size and the teacher's answer is
resized back; a fixed batch size is served in chunks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from sfda_deploy.classes import get_class_set
from sfda_deploy.device import device_name, is_cuda
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import NORMALIZATIONS, ONNX_KEY, ModelMeta, read_onnx_meta
from sfda_deploy.state_dict import file_sha256

# spatial size of the one forward pass that reads the class count of a model with a dynamic one
_PROBE_HW = (64, 64)


def is_onnx(path) -> bool:
    return str(path).lower().endswith(".onnx")


def _dim(value) -> Optional[int]:
    """A static ONNX dimension as int, a symbolic one (``'batch'``, None) as None."""
    return value if isinstance(value, int) and value > 0 else None


def teacher_meta(props: dict, path: Path, class_set: Optional[str], normalization: Optional[str],
                 input_hw: Optional[tuple[int, int]]) -> ModelMeta:
    """The teacher's ``ModelMeta``: from the file's metadata, else from ``class_set``/``normalization``.

    Raises:
        SfdaError: plain ONNX without both flags; flags contradicting the file's metadata.
    """
    if ONNX_KEY in props:
        meta = read_onnx_meta(props, str(path))
        if class_set and class_set != meta.class_set:
            raise SfdaError(f"{path} says it predicts class set {meta.class_set}, not {class_set}: "
                            "drop --class-set (the file's metadata is used)")
        if normalization:
            preset = NORMALIZATIONS[normalization]
            if tuple(preset["mean"]) != tuple(meta.mean) or preset["channel_order"] != meta.channel_order:
                raise SfdaError(f"{path} records its own input normalisation, not '{normalization}': "
                                "drop --normalization (the file's metadata is used)")
        return meta
    if not class_set or not normalization:
        raise SfdaError(f"{path} carries no sfda-deploy metadata, so its classes and input convention are "
                        "unknown: pass --class-set NAME and --normalization imagenet|caffe")
    if normalization not in NORMALIZATIONS:
        raise SfdaError(f"unknown normalization '{normalization}': use {', '.join(NORMALIZATIONS)}")
    classes, preset = get_class_set(class_set), NORMALIZATIONS[normalization]
    return ModelMeta(arch="onnx", class_set=classes.name, num_classes=classes.num_classes,
                     mean=tuple(preset["mean"]), std=tuple(preset["std"]), channel_order=preset["channel_order"],
                     input_size=tuple(input_hw or (512, 1024)), extra={"normalization": normalization})


class BlackBoxTeacher:
    """A frozen ONNX model queried for soft predictions on batches of target images.

    Attributes:
        meta: the source's ``ModelMeta`` (class set, normalisation, input size).
        path / sha256: the file, for provenance.
        providers: ONNX Runtime execution providers actually used.
        input_hw / input_batch: the file's static input size and batch, None where dynamic.
        output_kind: ``logits`` (logits or probabilities) or ``mask`` (a label map).
    """

    def __init__(self, session, meta: ModelMeta, path: Path, providers: list[str]):
        self.session, self.meta, self.path, self.providers = session, meta, Path(path), providers
        self.sha256 = file_sha256(self.path)
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise SfdaError(f"{path} takes {len(inputs)} input(s) of shape "
                            f"{[list(i.shape) for i in inputs]}, not one image batch [B,3,H,W]: "
                            "pass a segmentation model exported with one image input")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        shape = inputs[0].shape
        self.input_batch = _dim(shape[0])
        h, w = _dim(shape[2]), _dim(shape[3])
        self.input_hw = (h, w) if h and w else None
        out_shape = outputs[0].shape
        self.output_kind = "mask" if len(out_shape) == 3 or "int" in outputs[0].type else "logits"
        if self.output_kind == "logits" and len(out_shape) != 4:
            raise SfdaError(f"{path} returns an output of shape {list(out_shape)}, neither logits [B,C,H,W] nor "
                            "a label map [B,H,W]: pass a semantic-segmentation model")

    @classmethod
    def open(cls, path, device: str = "cpu", class_set: Optional[str] = None,
             normalization: Optional[str] = None) -> "BlackBoxTeacher":
        """Open ``path`` with ONNX Runtime and check that its outputs fit its class set.

        The teacher runs on CUDA only where the installed ONNX Runtime has the CUDA provider,
        else on CPU (the student still trains on ``device``).

        Raises:
            SfdaError: missing/corrupt file, unknown classes or input convention, output class
                count different from the class set's.
        """
        from sfda_deploy.onnxrt import create_session, import_onnxruntime

        path = Path(path)
        ort = import_onnxruntime()
        cuda_ort = "CUDAExecutionProvider" in ort.get_available_providers()
        ort_device = device_name(device) if is_cuda(device) and cuda_ort else "cpu"
        session, providers = create_session(path, ort_device)
        shape = session.get_inputs()[0].shape if session.get_inputs() else []
        hw = (_dim(shape[2]), _dim(shape[3])) if len(shape) == 4 else (None, None)
        props = dict(session.get_modelmeta().custom_metadata_map)
        meta = teacher_meta(props, path, class_set, normalization, hw if all(hw) else None)
        teacher = cls(session, meta, path, providers)
        teacher.check_classes()
        return teacher

    # ---- checks ---------------------------------------------------------------------------------
    def output_classes(self) -> Optional[int]:
        """Class count of the logits (static shape or one probe pass); None for a label-map output."""
        if self.output_kind == "mask":
            return None
        c = _dim(self.session.get_outputs()[0].shape[1])
        if c is None:
            probe = torch.zeros(1, 3, *(self.input_hw or _PROBE_HW))
            c = int(self._run(self.meta.normalize(probe).numpy()).shape[1])
        return c

    def check_classes(self) -> None:
        """The output channels, the metadata's class count and its class set must agree."""
        expected = get_class_set(self.meta.class_set).num_classes
        c = self.output_classes()
        if c is not None and c != expected:
            raise SfdaError(f"class-count mismatch: {self.path} outputs {c} classes but its class set "
                            f"'{self.meta.class_set}' has {expected}: use a source that predicts the target's "
                            f"{expected} classes (or name the class set with {c} classes)")
        if self.meta.num_classes != expected:
            raise SfdaError(f"{self.path} metadata says {self.meta.num_classes} classes but class set "
                            f"'{self.meta.class_set}' has {expected}: re-export the model")

    # ---- inference ------------------------------------------------------------------------------
    def _run(self, x: np.ndarray) -> np.ndarray:
        """One ONNX Runtime call on a normalised ``[B,3,H,W]`` float32 array (B as the file allows)."""
        if self.input_batch is None:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        outs, n, b = [], x.shape[0], self.input_batch
        for i in range(0, n, b):  # a fixed batch: serve in chunks, padding the last with repeats
            chunk = x[i:i + b]
            if chunk.shape[0] < b:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - chunk.shape[0], axis=0)])
            outs.append(self.session.run([self.output_name], {self.input_name: chunk})[0][: n - i])
        return np.concatenate(outs)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a batch.

        Args:
            images: float or uint8 0-255 RGB ``[B,3,H,W]`` on any device.

        Returns:
            float32 ``[B,C,H,W]`` on ``images.device``: logits, log-probabilities, or ``log(one-hot)``
            (``-inf`` off the label; pixels labelled outside 0…C−1 get zeros = a uniform target).
        """
        hw = tuple(images.shape[-2:])
        x = self.meta.normalize(images.detach()).cpu()
        if self.input_hw is not None and hw != self.input_hw:  # a fixed-size model: resize in, resize back
            x = F.interpolate(x, size=self.input_hw, mode="bilinear", align_corners=False)
        out = torch.from_numpy(np.ascontiguousarray(self._run(x.contiguous().numpy())))
        if self.output_kind == "mask":
            labels = out.long()
            if labels.dim() == 4:  # [B,1,H,W]
                labels = labels[:, 0]
            if tuple(labels.shape[-2:]) != hw:
                labels = F.interpolate(labels[:, None].float(), size=hw, mode="nearest")[:, 0].long()
            return _log_one_hot(labels, self.meta.num_classes).to(images.device)
        out = out.float()
        if bool((out >= 0).all()) and torch.allclose(out.sum(1), torch.ones(()), atol=1e-3):
            out = out.log()  # the source answers probabilities: their log is a valid logit
        if tuple(out.shape[-2:]) != hw:
            out = F.interpolate(out, size=hw, mode="bilinear", align_corners=self.meta.align_corners)
        return out.to(images.device)


def _log_one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int ``[B,H,W]`` → ``[B,C,H,W]`` with 0 at the label and −inf elsewhere (zeros where invalid)."""
    valid = (labels >= 0) & (labels < num_classes)
    out = torch.full((labels.shape[0], num_classes, *labels.shape[1:]), float("-inf"))
    out.scatter_(1, labels.clamp(0, num_classes - 1)[:, None], 0.0)
    return torch.where(valid[:, None], out, torch.zeros(()))


@torch.no_grad()
def teacher_agreement(student, meta: ModelMeta, teacher: BlackBoxTeacher, dataset, device,
                      max_images: Optional[int] = None) -> float:
    """Share of pixels whose student argmax equals the teacher's, over whole target images.

    Args:
        student: the torch model (run in eval mode, restored after).
        meta: the student's metadata (its normalisation).
        dataset: items with ``image`` uint8 ``[3,H,W]``.
    """
    was_training = student.training
    student.eval()
    same = total = 0
    for i in range(min(len(dataset), max_images or len(dataset))):
        image = dataset[i]["image"][None].to(device).float()
        s = student(meta.normalize(image)).argmax(1)
        t = teacher(image).argmax(1)
        same += int((s == t).sum())
        total += s.numel()
    student.train(was_training)
    return same / max(total, 1)
