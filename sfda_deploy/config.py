"""One frozen dataclass per command: the defaults in one visible block.

Flags and YAML keys map 1:1 (``--data-root`` ↔ ``data_root`` or ``data-root``); precedence is
defaults < ``--config file.yaml`` < flags given on the command line. Built in one place
(``config_build.build_config``), every value checked (``config_values``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional


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
    budget: int = 300                   # ATP iterations in all, split over A, T, P (a few minutes on 2 cores)
    style: str = "real"                 # target style the demo adapts to


@dataclass(frozen=True)
class GenerateDataConfig:
    out: Optional[str] = None           # default: a new runs/generate-data/NAME
    styles: str = "source,real,fog,night,rain,fog-dense,night-dark,city2,suburb,autumn-rain,night-city,newtown,newtown-worn"
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
    imgsz: Optional[tuple[int, int]] = None   # resize images to H W before the model (default: the model's)
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
    pth_prefix: Optional[str] = None    # UDA trainer checkpoint: model (student, default) | ema_model | imnet_model
    name: Optional[str] = None          # default: the file's stem


@dataclass(frozen=True)
class SelectionSettings:
    """How adapt (and each method of compare) picks the checkpoint it ships; the flags of the same names
    (``--select-by`` ...), declared once for both commands. Ranges and choices: ``config_values``."""

    select_by: str = "im+snd"           # label-free criterion that picks: im | snd | mix | a composite (im+snd ...)
    select_every: Optional[int] = None  # iterations between scoring points (None: 4 per stage; 0: stage ends)
    select_images: int = 16             # size of the fixed target sample the criteria are computed on
    fallback: bool = True               # ship the source when the selection does not beat it or collapsed
    fallback_margin: float = 0.01       # relative margin over the source's score the selection must beat
    fallback_by: Optional[str] = "im+snd"  # criterion of that comparison (None: --select-by's)
    fallback_to: str = "adabn"          # adabn: AdaBN (the source if it collapsed) | better: the better on fallback_by
    baseline: str = "adabn"             # fallback and floor: adabn (BN statistics re-estimated) | source
    floor_by: Optional[str] = "snd"     # criteria a shipped checkpoint keeps within floor_tolerance of AdaBN's
    floor_tolerance: float = 0.03       # relative: 0.03 = a checkpoint may score 3 % below AdaBN
    floor_sticky: bool = True           # once a checkpoint falls below the floor, no later one ships
    collapse_ref: str = "source"        # a checkpoint collapsed against: source | adabn | agree (both)
    stage_keep: str = "last"            # what a stage hands on: last (its end) | best (start or end, by the criterion)

    def selection_values(self) -> dict[str, Any]:
        """These settings alone, by name (of an ``AdaptConfig`` or ``CompareConfig``)."""
        return {f.name: getattr(self, f.name) for f in fields(SelectionSettings)}


@dataclass(frozen=True)
class AdaptConfig(SelectionSettings):
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
    resume: Optional[str] = None
    device: str = "cpu"
    workers: int = 2
    seed: int = 0
    name: Optional[str] = None          # default: the method name
    options: dict[str, Any] = field(default_factory=dict)  # method hyper-parameters (--set k=v)


@dataclass(frozen=True)
class CompareConfig(SelectionSettings):
    target: str = "cityscapes"
    data_root: Optional[str] = None
    source: Optional[str] = None
    methods: str = "atp,ldbe,prsfda,hiast,cpsl"
    eval_split: str = "val"
    oracle_miou: Optional[float] = None   # target-supervised mIoU, for the "gap closed" column
    amp: bool = True
    iters: Optional[int] = None           # per stage of each method, as adapt's (method default when None)
    budget: Optional[int] = None          # or: per method in all, split evenly over its stages
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
    targets: tuple[str, ...] = ()       # deployment targets (export/targets.py): deepstream, triton
    target_options: dict[str, Any] = field(default_factory=dict)  # TARGET.OPTION: value (--target-set)


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
    adapt: Optional[str] = None         # online adaptation while segmenting: a name of adapt.online.ONLINE_METHODS
    adapt_every: int = 8                # one update per K frames (fps stays >= ~50 % on CPU)
    adapt_reset: bool = True            # drift/collapse detector → reset to the starting weights
    adapt_options: dict[str, Any] = field(default_factory=dict)  # method hyper-parameters (--adapt-set k=v)
    labels: Optional[str] = None        # folder of labelId PNGs, one per frame (+ conditions.csv): score
    save_adapted: bool = False          # write the adapted weights (adapted.safetensors) at the end
    reconnect_after: float = 2.0        # a live source without a frame for this long is reopened (data.live)
    reconnect_tries: int = 5            # reopen attempts per drop, backoff 1, 2, 4, 8 s (-1: forever, 0: never)
    name: str = "segment"
    ray: bool = False                   # spread several sources over a local Ray cluster (commands/fleet.py)
    ray_address: Optional[str] = None   # ... or over an existing one (implies ray)
    ray_actors: Optional[int] = None    # workers (default: one per GPU, or per --threads CPUs)


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
