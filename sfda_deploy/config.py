"""One frozen dataclass per command: the defaults in one visible block.

Flags and YAML keys map 1:1 (``--data-root`` ↔ ``data_root`` or ``data-root``); precedence is
defaults < ``--config file.yaml`` < flags given on the command line.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import yaml

from sfda_deploy.classes import suggest
from sfda_deploy.errors import SfdaError

T = TypeVar("T")


# ------------------------------------------------------------------------------------------
# Defaults of every command, in one block.
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoConfig:
    name: str = "demo"
    device: str = "cpu"
    data_dir: Optional[str] = None      # where the synthetic benchmark is generated (default: runs dir)
    size: tuple[int, int] = (128, 256)  # H W of generated frames (the bundled model's training images)
    images: int = 30                    # per split and style
    model: Optional[str] = None         # source checkpoint (default: the bundled one)
    seed: int = 0
    adapt_iters: int = 300              # ATP budget of the demo (fits a few minutes on 2 cores)
    style: str = "real"                 # target style the demo adapts to


@dataclass(frozen=True)
class GenerateDataConfig:
    out: Optional[str] = None           # default: a new runs/generate-data/NAME
    styles: str = "source,real,fog,night,rain,fog-dense,night-dark"
    train: int = 300                    # images per style in the train split
    val: int = 100                      # images per style in the val split
    size: tuple[int, int] = (256, 512)  # H W
    seed: int = 0
    name: str = "synthetic"
    drive: Optional[str] = None         # write a labelled drive (video + labels) to this new folder instead
    conditions: str = "real,rain,fog,night,real"  # the drive's conditions (style names), in order
    rounds: int = 3                     # the drive repeats its conditions this many times
    condition_frames: int = 50          # frames per condition
    scene_frames: int = 40              # frames per street (the camera drives 0.5 m per frame)


@dataclass(frozen=True)
class EvaluateConfig:
    checkpoint: Optional[str] = None
    predictions: Optional[str] = None
    pred_format: str = "labelid"        # labelid | trainid
    class_set: Optional[str] = None     # default: the checkpoint's (predictions: cityscapes19)
    target: str = "cityscapes"
    data_root: Optional[str] = None
    split: str = "val"
    device: str = "cpu"
    batch: int = 1
    workers: int = 0
    max_images: Optional[int] = None
    imgsz: Optional[tuple[int, int]] = None   # resize images to H W before the model (default: their size)
    name: str = "eval"


@dataclass(frozen=True)
class TrainSourceConfig:
    target: str = "cityscapes"
    data_root: Optional[str] = None
    split: str = "train"
    eval_split: str = "val"
    arch: str = "mobilenetv2_aspp"
    class_set: str = "cityscapes19"
    normalization: str = "imagenet"
    init: Optional[str] = None          # checkpoint to start from
    augment: bool = True                # photometric augmentation (jitter, blur, noise) of the crops
    iters: int = 2000
    batch: int = 8
    crop: tuple[int, int] = (256, 512)
    lr: float = 1e-3
    optimizer: str = "adamw"
    amp: bool = True
    eval_every: int = 500
    device: str = "cpu"
    workers: int = 2
    seed: int = 0
    name: str = "source"


@dataclass(frozen=True)
class ImportConfig:
    pth: Optional[str] = None           # the legacy .pth file
    arch: Optional[str] = None          # required: registry name, e.g. deeplabv2_r101
    normalization: Optional[str] = None  # required: caffe | imagenet (how the weights expect input)
    class_set: Optional[str] = None     # default: from the classifier's class count
    num_classes: Optional[int] = None   # default: read from the file
    align_corners: Optional[bool] = None  # default: the architecture's (DeepLabV2: True)
    input_size: tuple[int, int] = (512, 1024)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # builder options (--arch-kw k=v)
    name: Optional[str] = None          # default: the file's stem


@dataclass(frozen=True)
class AdaptConfig:
    target: str = "cityscapes"
    data_root: Optional[str] = None
    source: Optional[str] = None        # checkpoint, or .onnx for a black-box source
    method: str = "atp"
    stages: Optional[str] = None        # e.g. "A,T,P" (method default when None)
    propagate: bool = False             # ATP's information propagation after any method
    arch: Optional[str] = None          # student architecture for a black-box source
    class_set: Optional[str] = None     # black-box .onnx without metadata: its class set
    normalization: Optional[str] = None  # black-box .onnx without metadata: imagenet | caffe
    split: str = "train"
    eval_split: str = "val"
    iters: Optional[int] = None         # per stage/round (method default when None)
    batch: Optional[int] = None
    crop: Optional[tuple[int, int]] = None
    lr: Optional[float] = None
    amp: bool = True
    eval_every: int = 0                 # 0: only at the end of each stage
    select_by: str = "mix"              # label-free criterion that picks the shipped checkpoint: im | snd | mix
    select_every: Optional[int] = None  # iterations between scoring points (None: 4 per stage; 0: stage ends)
    select_images: int = 16             # size of the fixed target sample the criteria are computed on
    fallback: bool = True               # ship the source when the selection does not beat it or collapsed
    fallback_margin: float = 0.01       # relative margin over the source's score the selection must beat
    fallback_by: Optional[str] = "im"   # criterion of that comparison (None: --select-by's)
    resume: Optional[str] = None
    device: str = "cpu"
    workers: int = 2
    seed: int = 0
    name: Optional[str] = None          # default: the method name
    options: dict[str, Any] = field(default_factory=dict)  # method hyper-parameters (--set k=v)


@dataclass(frozen=True)
class CompareConfig:
    target: str = "cityscapes"
    data_root: Optional[str] = None
    source: Optional[str] = None
    methods: str = "atp,ldbe,prsfda,hiast,cpsl"
    eval_split: str = "val"
    oracle_miou: Optional[float] = None   # target-supervised mIoU, for the "gap closed" column
    select_by: str = "mix"              # label-free criterion that picks the shipped checkpoint: im | snd | mix
    select_every: Optional[int] = None  # iterations between scoring points (None: 4 per stage; 0: stage ends)
    select_images: int = 16             # size of the fixed target sample the criteria are computed on
    fallback: bool = True               # ship the source when the selection does not beat it or collapsed
    fallback_margin: float = 0.01       # relative margin over the source's score the selection must beat
    fallback_by: Optional[str] = "im"   # criterion of that comparison (None: --select-by's)
    amp: bool = True
    iters: Optional[int] = None           # per method in all, split evenly over its stages
    batch: Optional[int] = None
    crop: Optional[tuple[int, int]] = None
    device: str = "cpu"
    workers: int = 2
    seed: int = 0
    name: str = "compare"
    resume: Optional[str] = None


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: Optional[str] = None
    onnx: bool = True                   # always: the ONNX is written first, --trt builds from it
    trt: bool = False
    imgsz: Optional[tuple[int, int]] = None  # default: the checkpoint's input size
    dynamic: bool = False
    batch: int = 1
    max_batch: Optional[int] = None     # --dynamic engine profile's largest batch (default: --batch)
    max_imgsz: Optional[tuple[int, int]] = None  # its largest H W (default: the export size)
    opset: int = 18
    output: str = "logits"              # logits | mask
    mask_dtype: str = "int32"           # int32 | uint8 (label map type of --output mask)
    fp16: bool = False
    int8: bool = False
    int8_cpu: bool = False              # model_int8_cpu.onnx for ONNX Runtime's CPU provider
    calib_data: Optional[str] = None
    calib_count: int = 300
    workspace: float = 4.0              # GB
    verify_data: Optional[str] = None
    device: str = "cpu"
    name: Optional[str] = None


@dataclass(frozen=True)
class VerifyConfig:
    model_a: Optional[str] = None
    model_b: Optional[str] = None
    data: Optional[str] = None
    max_images: int = 20
    device: str = "cpu"
    name: str = "verify"


@dataclass(frozen=True)
class SegmentConfig:
    source: Optional[str] = None
    model: Optional[str] = None         # default: the bundled demo model
    backend: str = "auto"               # auto | torch | onnxruntime | tensorrt
    device: str = "cpu"
    imgsz: Optional[tuple[int, int]] = None
    resize: str = "letterbox"           # letterbox (keep aspect, pad with the mean) | stretch
    batch: int = 1
    vid_stride: int = 1
    alpha: float = 0.5
    save_video: bool = True
    legend: bool = True                 # draw the classes in view into the overlay (and write legend.png)
    save_masks: bool = False
    mask_format: str = "trainid"        # trainid | labelid | color
    show_fps: bool = False
    max_frames: Optional[int] = None
    threads: Optional[int] = None       # CPU threads for torch / ONNX Runtime (default: the cores it may use)
    ort_opt: str = "auto"               # ONNX Runtime graph optimisation: auto | all | extended | basic
    adapt: Optional[str] = None         # online adaptation while segmenting: tent | cotta | anchored
    adapt_every: int = 8                # one update per K frames (fps stays >= ~50 % on CPU)
    adapt_reset: bool = True            # drift/collapse detector → reset to the starting weights
    adapt_options: dict[str, Any] = field(default_factory=dict)  # method hyper-parameters (--adapt-set k=v)
    labels: Optional[str] = None        # folder of labelId PNGs, one per frame (+ conditions.csv): score
    save_adapted: bool = False          # write the adapted weights (adapted.safetensors) at the end
    name: str = "segment"


@dataclass(frozen=True)
class BenchmarkConfig:
    model: Optional[str] = None
    backend: str = "auto"
    device: str = "cpu"
    imgsz: Optional[tuple[int, int]] = None
    batch: int = 1
    warmup: int = 20
    iters: int = 200
    compare: tuple[str, ...] = ()
    json: bool = False
    threads: Optional[int] = None       # CPU threads for torch / ONNX Runtime (default: the cores it may use)
    ort_opt: str = "auto"               # ONNX Runtime graph optimisation: auto | all | extended | basic
    name: str = "benchmark"


# ------------------------------------------------------------------------------------------
# Merging: defaults < YAML < flags.
# ------------------------------------------------------------------------------------------
def default_of(cls: type, name: str) -> Any:
    """The dataclass default of one field (for Click's ``default=``/``show_default``)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SfdaError(f"config file {path} does not exist: check the --config path")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SfdaError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}): fix its syntax") from None
    if not isinstance(data, dict):
        raise SfdaError(f"config file {path} must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _coerce(cls: type, name: str, value: Any) -> Any:
    """YAML lists → tuples for tuple-typed fields (frozen dataclasses stay hashable and comparable)."""
    if isinstance(value, list) and "tuple" in str({f.name: f.type for f in dataclasses.fields(cls)}[name]):
        return tuple(value)
    return value


def build_config(cls: type[T], yaml_values: dict[str, Any], flag_values: dict[str, Any]) -> T:
    """Merge into a ``cls`` instance, every value checked (``check_values``); unknown YAML keys get one
    line naming the valid ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in yaml_values:
        if key not in names:
            raise SfdaError(f"unknown option '{key}' in the config file{suggest(key, names)}: "
                            f"valid options are {', '.join(names)}")
    from_yaml = check_values(cls, {k: _coerce(cls, k, v) for k, v in yaml_values.items()})
    merged = {**from_yaml, **flag_values}
    for k, v in flag_values.items():  # mappings (--set, --arch-kw) add to the file's, key by key
        if isinstance(v, dict) and isinstance(from_yaml.get(k), dict):
            merged[k] = {**from_yaml[k], **v}
    if merged.get("resume"):
        merged = resumed_values(cls, str(merged["resume"]), merged)
    return cls(**check_values(cls, merged))


# ------------------------------------------------------------------------------------------
# --resume RUN: the run's own settings (its config.yaml); a differing option is refused, except the
# few that do not change what is computed.
# ------------------------------------------------------------------------------------------
MUTABLE_ON_RESUME = ("resume", "workers", "device", "eval_every")


def command_of(cls: type) -> str:
    """``AdaptConfig`` → ``adapt``: the command (and runs/ folder) a config class belongs to."""
    return cls.__name__.removesuffix("Config").lower()


def read_run_config(cls: type, run_dir: str | Path) -> dict[str, Any]:
    """The options a run of ``cls``'s command was started with (its ``config.yaml``)."""
    path, command = Path(run_dir) / "config.yaml", command_of(cls)
    if not path.is_file():
        raise SfdaError(f"{run_dir} is not a resumable {command} run (no config.yaml): pass a runs/{command}/<name> "
                        f"directory written by sfda-deploy {command}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SfdaError(f"{path} is unreadable ({type(e).__name__}): start a new run instead") from None
    if not isinstance(data, dict):
        raise SfdaError(f"{path} is not a mapping of option: value: start a new run instead")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: _coerce(cls, k, v) for k, v in data.items() if k in names and k != "resume"}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, str) and isinstance(b, str) and a != b and os.sep in a + b:
        return Path(a).resolve() == Path(b).resolve()  # the same file spelt two ways
    return a == b


def resumed_values(cls: type, run_dir: str, given: dict[str, Any]) -> dict[str, Any]:
    """The saved options of ``run_dir`` with ``given`` (flags, YAML, --set) checked against them.

    Raises:
        SfdaError: an option given with ``--resume`` differs from the run's, naming both values.
    """
    saved = read_run_config(cls, run_dir)
    pairs = []  # (label, given, saved): mappings (--set options) compared key by key
    for name, value in given.items():
        if name in MUTABLE_ON_RESUME or name not in saved:
            continue
        if isinstance(value, dict) and isinstance(saved[name], dict):
            pairs += [(f"{'--set' if name == 'options' else option_label(name)} {k}", v, saved[name].get(k, "unset"))
                      for k, v in value.items()]
        else:
            pairs.append((option_label(name), value, saved[name]))
    for what, value, was in pairs:
        if not _same(value, was):
            raise SfdaError(f"{what} {_show(value)} differs from {_show(was)}, which {run_dir} was started with: "
                            f"drop {what} to resume the run as it was (its config.yaml), or start a new run")
    return {**saved, **{k: v for k, v in given.items() if k in MUTABLE_ON_RESUME}}


def resume_changes(cls: type, cfg: Any) -> dict[str, tuple[Any, Any]]:
    """``{option: (saved, now)}`` of the options a resumed run changed (``MUTABLE_ON_RESUME``)."""
    saved = read_run_config(cls, cfg.resume)
    return {k: (saved[k], getattr(cfg, k)) for k in MUTABLE_ON_RESUME
            if k in saved and not _same(saved[k], getattr(cfg, k))}


# ------------------------------------------------------------------------------------------
# Checks: the type and range of every option (command flags, YAML and method --set alike), before
# anything is written. One line naming the option, the value and what is allowed.
# ------------------------------------------------------------------------------------------
def _at_least(low: float, kind: str = "an integer") -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"{kind} >= {low}"


def _between(low: float, high: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: low <= v <= high), f"a number from {low} to {high}"


_POSITIVE = _at_least(1)
_NATURAL = _at_least(0)
_FRACTION = _between(0, 1)
# Ranges by option name, for every config (and method config) that has the option; a tuple-valued
# option (crop, size, imgsz, input_size) has the range checked for each element.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: _POSITIVE for k in ("batch", "iters", "images", "max_images", "max_frames", "calib_count",
                              "vid_stride", "threads", "num_classes", "crop", "size", "imgsz", "input_size",
                              "condition_frames", "scene_frames", "adapt_every", "max_batch",
                              "max_imgsz")},
    **{k: _NATURAL for k in ("workers", "adapt_iters", "eval_every", "train", "val", "warmup", "checkpoint_every",
                             "preview_every", "warmup_iters", "poly_horizon")},
    "seed": ((lambda v: 0 <= v < 2 ** 32), "an integer from 0 to 2**32-1"),
    "opset": ((lambda v: 7 <= v <= 21), "an integer from 7 to 21"),
    "lr": ((lambda v: math.isfinite(v) and v > 0), "a number > 0"),
    "workspace": ((lambda v: math.isfinite(v) and v > 0), "a number of GB > 0"),
    "oracle_miou": _between(0, 100),
    **{k: _FRACTION for k in ("alpha", "flip", "ema_alpha")},
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
    "teacher_bn": ("batch", "eval"),
    "teacher_buffers": ("keep", "copy"),
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
