"""Checkpoints: ``model.safetensors`` whose header carries the JSON metadata, and legacy ``.pth`` import.

Loading never executes what a file holds: safetensors is plain tensors, and ``.pth`` files go through
``torch.load(weights_only=True)``. Loads are strict: a mismatch lists the missing/unexpected keys
(a silent partial load is a known failure of published SFDA code).
``import_pth`` maps the SFDA papers' published ``.pth`` layouts onto the registry's models.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sfda_deploy.errors import SfdaError
from sfda_deploy.classes import class_set_for, get_class_set
from sfda_deploy.metadata import NORMALIZATIONS, ModelMeta
from sfda_deploy.models import MODELS, build_model, get_builder
from sfda_deploy.runs import atomic_path, check_finished, new_run_dir, write_yaml

META_KEY = "sfda_deploy"


def save_checkpoint(path: Path | str, model: nn.Module, meta: ModelMeta) -> Path:
    """Write weights + metadata atomically. Returns the path."""
    from safetensors.torch import save_file

    module = model.module if hasattr(model, "module") else model  # DDP
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: meta.to_json()})
    return Path(path)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """Tensors and metadata of a ``.safetensors`` checkpoint, with one-line errors."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types for truncated/foreign files
        raise SfdaError(
            f"{path} is not a readable safetensors checkpoint ({type(e).__name__}): "
            "the file is truncated or of another format; re-download or re-create it"
        ) from None
    if META_KEY not in header:
        raise SfdaError(
            f"{path} has no sfda-deploy metadata: import the weights with "
            "'sfda_deploy.checkpoint.import_pth' or re-save them with sfda-deploy"
        )
    return state, ModelMeta.from_json(header[META_KEY], str(path))


def check_file(path: Path | str) -> Path:
    """``path`` if it is a file of a run that finished (``runs.check_finished``), else a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise SfdaError(f"checkpoint {path} does not exist: check the path (runs/*/*/model.safetensors)")
    check_finished(path)
    return path


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that names the missing/unexpected keys instead of a traceback."""
    missing, unexpected = [], []
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} of another shape (e.g. {k}: file {tuple(state[k].shape)} "
                         f"vs model {tuple(own[k].shape)})")
        raise SfdaError(
            f"{source} does not fit the model: {'; '.join(parts)}; check --arch / class count "
            "or the key layout of the file"
        )
    for k, v in state.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise SfdaError(f"{source} holds non-finite weights (NaN or inf) in {k}: the training that wrote it "
                            "diverged; use an earlier checkpoint (stage_*.safetensors) or train again with a lower --lr")
    model.load_state_dict(state, strict=True)


def load_model(path: Path | str, device: str | torch.device = "cpu", arch: str | None = None,
               **import_kwargs) -> tuple[nn.Module, ModelMeta]:
    """Load a checkpoint → (model in eval mode on ``device``, ModelMeta).

    ``.safetensors`` files carry their metadata. A legacy ``.pth``/``.pt`` file does not, so it loads
    only when ``arch`` (and ``normalization``, see :func:`import_pth`) are given.
    """
    path = check_file(path)
    if path.suffix in (".pth", ".pt"):
        if arch is None:
            raise SfdaError(
                f"{path} is a legacy .pth file without metadata: pass arch= and normalization= "
                "(load_model(path, arch='deeplabv2_r101', normalization='caffe')) or convert it once "
                "with 'sfda-deploy import-pth FILE --arch ARCH --normalization caffe|imagenet'"
            )
        model, meta = import_pth(path, arch, **import_kwargs)
        return model.to(device).eval(), meta
    state, meta = read_safetensors(path)
    model = build_model(meta.arch, num_classes=meta.num_classes, align_corners=meta.align_corners,
                        **meta.arch_kwargs)
    load_state(model, state, str(path))
    if meta.num_classes != meta.classes.num_classes:
        raise SfdaError(f"class-count mismatch: {path} predicts {meta.num_classes} classes but its class set "
                        f"'{meta.class_set}' has {meta.classes.num_classes}: re-create the checkpoint")
    return model.to(device).eval(), meta



# ---- legacy .pth import ------------------------------------------------------------------------
# Containers the published training scripts nest the weights in (checked in this order).
NEST_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net")
# Prefixes that wrap the whole model without being part of its layout: ``module.`` from
# DataParallel/DDP, ``Scale.`` from the DeepLab Caffe→PyTorch conversion the AdaptSegNet lineage
# initialises from. Structural prefixes of other code bases (mmseg's ``backbone.``/``decode_head.``)
# are NOT stripped: they belong to a different module tree, and the strict load names them.
WRAPPER_PREFIXES = ("module.", "Scale.")
CONVERT_HINT = ("if you trust its source, re-save only the weights in a separate environment "
                "(torch.save(torch.load(f, weights_only=False)['state_dict'], 'weights.pth')) and import that")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def read_pth(path: Path | str) -> dict[str, torch.Tensor]:
    """The state dict of a ``.pth`` file, loaded with ``weights_only=True`` (never runs file content).

    Unwraps ``state_dict``/``model``/``model_state`` nesting and strips wrapper prefixes
    (``WRAPPER_PREFIXES``) shared by every key.

    Raises:
        SfdaError: missing, truncated or foreign file; a file whose unpickling needs code/objects;
            no tensor dict inside.
    """
    path = check_file(path)
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
               input_size: tuple[int, int] = (512, 1024), **arch_kwargs) -> tuple[nn.Module, ModelMeta]:
    """Load a legacy ``.pth`` (e.g. a published DeepLabV2 source model) into a registry model.

    Args:
        path: the ``.pth``/``.pt`` file (plain or nested state dict, optional ``module.`` prefix).
        arch: registry name, e.g. ``deeplabv2_r101``.
        num_classes: default: read from the classifier weight in the file.
        class_set: default: the class set with that many classes (19 → cityscapes19, 16 → synthia16).
        normalization: input convention the weights were trained with: ``caffe`` (AdaptSegNet lineage:
            BGR, mean only, 0-255) or ``imagenet`` (RGB, ImageNet mean/std). Required: it cannot be
            read from the file, and a wrong one silently ruins the predictions.
        align_corners: logits upsampling; default: the architecture's (DeepLabV2: True).
        input_size: ``(H, W)`` to record as the model's working size.
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
    state = read_pth(path)
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
        extra={"normalization": normalization},
    ).with_provenance(command="import-pth", file=path.name, sha256=file_sha256(path))
    return model.eval(), meta


def run_import(cfg) -> Path:
    """``sfda-deploy import-pth``: a legacy ``.pth`` → ``runs/import/<name>/model.safetensors``."""
    if not cfg.pth:
        raise SfdaError("no .pth file given: sfda-deploy import-pth FILE --arch ARCH --normalization caffe|imagenet")
    if not cfg.arch:
        raise SfdaError(f"--arch is required to import {cfg.pth}: e.g. --arch deeplabv2_r101 "
                        f"(choose one of {', '.join(sorted(MODELS))})")
    if not cfg.normalization:
        raise SfdaError("--normalization is required: caffe (AdaptSegNet lineage: BGR, mean only) or "
                        "imagenet (RGB, ImageNet mean/std); check the training code of the checkpoint")
    model, meta = import_pth(cfg.pth, cfg.arch, num_classes=cfg.num_classes, class_set=cfg.class_set,
                             normalization=cfg.normalization, align_corners=cfg.align_corners,
                             input_size=cfg.input_size, **cfg.arch_kwargs)
    run_dir = new_run_dir("import", cfg.name or Path(cfg.pth).stem)  # only after the import succeeded
    write_yaml(run_dir / "config.yaml", dataclasses.asdict(cfg))
    out = save_checkpoint(run_dir / "model.safetensors", model, meta)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"imported {cfg.pth} as {meta.arch} ({n_params / 1e6:.1f} M parameters, {meta.num_classes} classes "
          f"'{meta.class_set}', {cfg.normalization} input) → {out}")
    return out
