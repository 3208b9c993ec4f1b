"""Every option's type and range (command flags, YAML and a method's ``--set`` alike), checked before anything
is written: one line naming the option, the value and what is allowed (a did-you-mean for named choices).

``build_options`` is the one path of every nested option set (a method's ``--set``, segment's ``--adapt-set``,
export's ``--target-set``): unknown keys with a did-you-mean, then ``check_values``, then the dataclass.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable

from sfda_deploy.classes import suggest
from sfda_deploy.errors import SfdaError


# ------------------------------------------------------------------------------------------
# Checks: the type and range of every option (command flags, YAML and method --set alike), before
# anything is written. One line naming the option, the value and what is allowed.
# ------------------------------------------------------------------------------------------
def _at_least(low: float, kind: str = "an integer") -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"{kind} >= {low}"


def _between(low: float, high: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: low <= v <= high), f"a number from {low} to {high}"


# The label-free selection's settings (config.SelectionSettings): criteria, baselines, collapse references.
SELECTION_CRITERIA = ("im", "snd", "mix")
# Composites of the criteria (``adapt/selection/criteria.py``: the mean of the parts' relative gains over AdaBN's).
SELECTION_COMPOSITES = ("im+snd", "im+mix", "snd+mix", "im+snd+mix")
MIN_SELECT_IMAGES = 2  # the mix probe pairs images, SND needs two samples

_POSITIVE = _at_least(1)
_NATURAL = _at_least(0)
_FRACTION = _between(0, 1)
# Ranges by option name, for every config (and method config) that has the option; a tuple-valued
# option (crop, size, imgsz, input_size) has the range checked for each element.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: _POSITIVE for k in ("batch", "iters", "images", "max_images", "max_frames", "calib_count",
                              "vid_stride", "threads", "num_classes", "crop", "size", "imgsz", "input_size",
                              "condition_frames", "scene_frames", "adapt_every", "max_batch",
                              "max_imgsz", "max_batch_size", "instances", "ray_actors")},
    **{k: _NATURAL for k in ("workers", "adapt_iters", "budget", "eval_every", "train", "val", "warmup",
                             "checkpoint_every", "preview_every", "warmup_iters", "poly_horizon", "gpu_id", "interval",
                             "max_queue_delay_us")},
    "seed": ((lambda v: 0 <= v < 2 ** 32), "an integer from 0 to 2**32-1"),
    "opset": ((lambda v: 7 <= v <= 21), "an integer from 7 to 21"),
    "lr": ((lambda v: math.isfinite(v) and v > 0), "a number > 0"),
    "workspace": ((lambda v: math.isfinite(v) and v > 0), "a number of GB > 0"),
    "oracle_miou": _between(0, 100),
    **{k: _FRACTION for k in ("alpha", "flip", "ema_alpha", "segmentation_threshold",
                              # online adaptation (segment --adapt-set)
                              "bn_momentum", "max_entropy", "ema", "restore_p", "confidence")},
    "anchor_weight": ((lambda v: math.isfinite(v) and v >= 0), "a number >= 0"),
    "scales": ((lambda v: math.isfinite(v) and v > 0), "numbers > 0"),
    "reconnect_after": ((lambda v: math.isfinite(v) and v > 0), "a number of seconds > 0"),
    "reconnect_tries": ((lambda v: v >= -1), "an integer >= -1 (-1: forever, 0: never)"),
    "select_every": ((lambda v: v >= 0), "an integer >= 0 (N: score every N iterations, 0: at stage ends only; "
                     "leave it out for 4 points per stage)"),
    "select_images": _at_least(MIN_SELECT_IMAGES),
    "fallback_margin": ((lambda v: v >= 0), "a number >= 0 (a share of the fallback's score, e.g. 0.01)"),
    "floor_tolerance": ((lambda v: 0 <= v < 1), "a number in [0, 1) (a share of the baseline's score, e.g. 0.03)"),
}
# Named choices (YAML and --set bypass Click's own choice lists; misspellings get a did-you-mean).
CHOICES: dict[str, tuple[str, ...]] = {
    "backend": ("auto", "torch", "onnxruntime", "tensorrt"),
    "ort_opt": ("auto", "all", "extended", "basic"),
    "resize": ("letterbox", "stretch"),
    "mask_format": ("trainid", "labelid", "color"),
    "pred_format": ("labelid", "trainid"),
    "output": ("logits", "mask"),
    "mask_dtype": ("int32", "uint8"),
    "optimizer": ("adamw", "sgd"),
    "normalization": ("imagenet", "caffe"),
    "pth_prefix": ("model", "ema_model", "imnet_model"),
    "teacher_bn": ("batch", "eval"),
    "teacher_buffers": ("keep", "copy"),
    "instance_kind": ("auto", "gpu", "cpu"),
    "student_bn": ("train", "frozen", "adabn"),
    "select_by": SELECTION_CRITERIA + SELECTION_COMPOSITES,
    "fallback_by": SELECTION_CRITERIA + SELECTION_COMPOSITES,
    "fallback_to": ("better", "adabn"),
    "baseline": ("adabn", "source"),
    "collapse_ref": ("source", "adabn", "agree"),
    "stage_keep": ("last", "best"),
}


def option_label(name: str) -> str:
    """How a user names a command option: its flag (the YAML key is the same word)."""
    return "--" + name.replace("_", "-")


def check_values(cls: type, values: dict[str, Any], label: Callable[[str], str] = option_label) -> dict[str, Any]:
    """``values`` (names of ``cls`` fields) type- and range-checked; numbers given as text for a float
    option (``--set lr=1e-3``, which YAML reads as a string) are converted.

    Raises:
        SfdaError: naming the option (``label(name)``), the value and what is allowed.
    """
    hints = typing.get_type_hints(cls)
    out = {}
    for name, value in values.items():
        value = _typed(label(name), value, hints.get(name, Any))
        _check_range(label(name), name, value)
        out[name] = value
    return out


def check_keys(cls: type, options: dict[str, Any], owner: str) -> None:
    """Every key of ``options`` names a field of ``cls``, else one line with a did-you-mean and the valid names
    (``owner``: what the options belong to, e.g. ``--adapt tent``)."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in names:
            raise SfdaError(f"unknown option '{key}' for {owner}{suggest(str(key), names)}: "
                            f"valid options are {', '.join(names)}")


def build_options(cls: type, options: dict[str, Any], owner: str, label: Callable[[str], str]) -> Any:
    """``cls()`` with ``options`` applied: keys (``check_keys``), types, ranges and choices (``check_values``,
    each value named by ``label(key)``) checked first.

    Raises:
        SfdaError: one line naming the key or value and the fix.
    """
    check_keys(cls, options, owner)
    return dataclasses.replace(cls(), **check_values(cls, options, label))


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(list(value) if isinstance(value, tuple) else value)


def _refuse(label: str, value: Any, allowed: str) -> SfdaError:
    return SfdaError(f"{label} {_show(value)} is not allowed: use {allowed}")


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a text value"}


def _typed(label: str, value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (Optional, bool, int, float, str, tuple[...], dict) or an SfdaError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is tuple:
        return _typed_tuple(label, value, args)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _refuse(label, value, "a mapping of key: value")
        return value
    if tp is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _refuse(label, value, "a number") from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(tp, type) and tp in _KINDS:
        if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
            raise _refuse(label, value, _KINDS[tp])
        if tp is float and not math.isfinite(value):
            raise _refuse(label, value, "a finite number")
    return value


def _typed_tuple(label: str, value: Any, args: tuple) -> tuple:
    fixed = bool(args) and args[-1] is not Ellipsis
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or (fixed and len(value) != len(args)):
        raise _refuse(label, value, f"{len(args)} values" if fixed else "a list of values")
    if not fixed:
        return tuple(_typed(label, v, args[0] if args else Any) for v in value)
    return tuple(_typed(label, v, a) for v, a in zip(value, args))


def _check_range(label: str, name: str, value: Any) -> None:
    if value is None:
        return
    if name in CHOICES and value not in CHOICES[name]:
        raise SfdaError(f"unknown {label} {_show(value)}{suggest(str(value), CHOICES[name])}: "
                        f"use one of {', '.join(CHOICES[name])}")
    if name in RANGES:
        ok, allowed = RANGES[name]
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not ok(v):
                raise _refuse(label, value, allowed)
