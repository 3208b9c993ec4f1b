"""Legacy ``.pth`` import: the SFDA papers' published layouts mapped onto the registry's models.

Loading never executes what a file holds: ``torch.load(weights_only=True)``, and a file that needs code
is refused with the names of what it would import (found by disassembling the pickle, not running it).
The safetensors format the package writes is ``sfda_deploy.checkpoint``.
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfda_deploy.classes import class_set_for, get_class_set
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import NORMALIZATIONS, ModelMeta
from sfda_deploy.models import build_model, get_builder
from sfda_deploy.pth_layouts import to_registry
from sfda_deploy.state_dict import check_file, file_sha256, load_state

# Containers the published training scripts nest the weights in (checked in this order).
NEST_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net")


# Prefixes that wrap the whole model without being part of its layout: ``module.`` from
# DataParallel/DDP, ``Scale.`` from the DeepLab Caffe→PyTorch conversion the AdaptSegNet lineage
# initialises from. Structural prefixes of other code bases (mmseg's ``backbone.``/``decode_head.``)
# are NOT stripped: they belong to a different module tree, and the strict load names them.
WRAPPER_PREFIXES = ("module.", "Scale.")


CONVERT_HINT = ("if you trust its source, re-save only the weights in a separate environment "
                "(torch.save(torch.load(f, weights_only=False)['state_dict'], 'weights.pth')) and import that")


def _unsafe_globals(path: Path, message: str) -> list[str]:
    """Names of the code a pickle would import, found without running it (static disassembly)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy (non-zip) files: torch's scan needs the zip format
        names = _legacy_unsafe_globals(path)
    return names or re.findall(r"GLOBAL ([\w.]+)", message)


def _legacy_unsafe_globals(path: Path, max_pickles: int = 8) -> list[str]:
    """Globals outside torch's weights-only allow-list in a bare (non-zip) pickle file.

    Read with ``pickletools`` (a disassembler: nothing is imported or run). Old ``torch.save``
    files are several pickles in a row (magic number, protocol, system info, the object), then raw
    storage bytes, where disassembly stops.
    """
    import pickletools

    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        allowed = set(_get_allowed_globals())
    except Exception:  # private API: without it, report every global
        allowed = set()
    names: list[str] = []
    strings: list[str] = []
    with open(path, "rb") as f:
        for _ in range(max_pickles):
            try:
                for op, arg, _pos in pickletools.genops(f):
                    if op.name == "GLOBAL":
                        names.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        names.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str) and "UNICODE" in op.name:
                        strings.append(arg)
            except Exception:  # end of the pickles (storage bytes, EOF)
                break
    return [n for n in names if n not in allowed]


def read_safetensors_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (e.g. a Hugging Face ``model.safetensors``), one-line errors."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated/foreign files
        raise SfdaError(f"{path} is not a readable .safetensors file ({type(e).__name__}): the file is truncated "
                        "or of another format; re-download it") from None


def read_pth(path: Path | str) -> dict[str, torch.Tensor]:
    """The state dict of a ``.pth``/``.bin`` file, loaded with ``weights_only=True`` (never runs file content),
    or of a ``.safetensors`` file.

    Unwraps ``state_dict``/``model``/``model_state`` nesting and strips wrapper prefixes
    (``WRAPPER_PREFIXES``) shared by every key.

    Raises:
        SfdaError: missing, truncated or foreign file; a file whose unpickling needs code/objects;
            no tensor dict inside.
    """
    path = check_file(path)
    if path.suffix == ".safetensors":
        return unwrap_state_dict(read_safetensors_weights(path), str(path))
    try:
        with warnings.catch_warnings():  # torch's protocol warnings would break the one-line error
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path, str(e))
        if unsafe:
            raise SfdaError(
                f"{path} contains pickled code/objects ({', '.join(sorted(set(unsafe))[:3])}); it was not "
                f"loaded: convert it to plain weights: {CONVERT_HINT}"
            ) from None
        raise SfdaError(f"{path} is not a readable .pth checkpoint (corrupt pickle): re-download it") from None
    except Exception as e:  # torch raises RuntimeError/EOFError/KeyError/... for truncated or foreign files
        raise SfdaError(
            f"{path} is not a readable .pth checkpoint ({type(e).__name__}): the file is truncated or "
            "of another format; re-download it"
        ) from None
    return unwrap_state_dict(obj, str(path))


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a loaded checkpoint object and strip wrapper key prefixes."""
    while isinstance(obj, dict) and not _is_state_dict(obj):
        key = next((k for k in NEST_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            keys = ", ".join(map(str, list(obj)[:5]))
            raise SfdaError(
                f"{source} holds no state dict of tensors (top-level keys: {keys or 'none'}): expected "
                f"tensors, possibly under one of {', '.join(NEST_KEYS)}; re-save model.state_dict()"
            )
        obj = obj[key]
    if not _is_state_dict(obj):
        raise SfdaError(f"{source} holds a {type(obj).__name__}, not a state dict: re-save model.state_dict()")
    state = dict(obj)
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _resolve_classes(state: dict[str, torch.Tensor], classifier_key: str, num_classes: int | None,
                     class_set: str | None, source: str):
    """Class count from the classifier weight, checked against ``num_classes`` and ``class_set``."""
    in_file = int(state[classifier_key].shape[0]) if classifier_key in state else None
    if num_classes is not None and in_file is not None and num_classes != in_file:
        raise SfdaError(f"class-count mismatch: {source} predicts {in_file} classes ({classifier_key}) "
                        f"but {num_classes} were asked for: drop num_classes or fix it")
    n = num_classes or in_file
    if class_set is not None:
        cs = get_class_set(class_set)
        if n is not None and cs.num_classes != n:
            raise SfdaError(f"class-count mismatch: {source} has {n} classes but class set '{class_set}' has "
                            f"{cs.num_classes}: choose the class set with {n} classes")
        return cs
    if n is None:
        raise SfdaError(f"{source} has no '{classifier_key}' to read the class count from: "
                        "pass num_classes / --class-set")
    return class_set_for(n)


def import_pth(path: Path | str, arch: str, num_classes: int | None = None, class_set: str | None = None,
               normalization: str | None = None, align_corners: bool | None = None,
               input_size: tuple[int, int] = (512, 1024), pth_prefix: str | None = None,
               **arch_kwargs) -> tuple[nn.Module, ModelMeta]:
    """Load a published checkpoint (e.g. a DeepLabV2 source model, a DAFormer/ATP or SegFormer release)
    into a registry model; the layouts are ``sfda_deploy.pth_layouts``.

    Args:
        path: the ``.pth``/``.pt``/``.bin`` (plain or nested state dict, optional ``module.`` prefix) or a
            ``.safetensors`` file.
        arch: registry name, e.g. ``deeplabv2_r101``, ``daformer_mitb5``.
        num_classes: default: read from the classifier weight in the file.
        class_set: default: the class set with that many classes (19 → cityscapes19, 16 → synthia16).
        normalization: input convention the weights were trained with: ``caffe`` (AdaptSegNet lineage:
            BGR, mean only, 0-255) or ``imagenet`` (RGB, ImageNet mean/std). Required: it cannot be
            read from the file, and a wrong one silently ruins the predictions.
        align_corners: logits upsampling; default: the architecture's (DeepLabV2: True).
        input_size: ``(H, W)`` to record as the model's working size.
        pth_prefix: of a UDA trainer checkpoint, the network to import (``model``: the student, the
            default; ``ema_model``: the teacher; ``imnet_model``).
        **arch_kwargs: builder options (e.g. ``prediction_head="layer5"``); ``multi_level`` is read
            from the file when not given.

    Returns:
        (model in eval mode on CPU, ModelMeta); save both with :func:`save_checkpoint`.
    """
    if normalization not in NORMALIZATIONS:
        raise SfdaError(f"normalization {normalization!r} is not one of {', '.join(NORMALIZATIONS)}: say how "
                        "the weights expect input (caffe: AdaptSegNet lineage, BGR mean-only; imagenet: RGB mean/std)")
    builder = get_builder(arch)
    path = Path(path)
    mapped = to_registry(read_pth(path), builder, arch, pth_prefix, str(path))
    state = mapped.state
    arch_kwargs = {**mapped.arch_kwargs, **arch_kwargs}
    if hasattr(builder, "kwargs_from_state"):
        arch_kwargs = {**builder.kwargs_from_state(state), **arch_kwargs}
    classes = _resolve_classes(state, getattr(builder, "classifier_weight", "classifier.weight"),
                               num_classes, class_set, str(path))
    if align_corners is not None:
        arch_kwargs["align_corners"] = align_corners
    model = build_model(arch, num_classes=classes.num_classes, **arch_kwargs)
    # Files saved before PyTorch 0.4.1 have no BN counters; they are bookkeeping, not weights.
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    load_state(model, state, str(path))
    preset = NORMALIZATIONS[normalization]
    arch_kwargs.pop("align_corners", None)
    meta = ModelMeta(
        arch=arch, class_set=classes.name, num_classes=classes.num_classes, mean=tuple(preset["mean"]),
        std=tuple(preset["std"]), channel_order=preset["channel_order"], input_size=tuple(input_size),
        align_corners=model.align_corners, arch_kwargs=arch_kwargs,
        extra={"normalization": normalization, "pth_layout": mapped.describe()},
    ).with_provenance(command="import-pth", file=path.name, sha256=file_sha256(path), layout=mapped.describe())
    return model.eval(), meta
