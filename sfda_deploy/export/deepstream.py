"""``export --deepstream``: a folder DeepStream's Gst-nvinfer runs as it is (JetPack 6 / DeepStream 7.x).

``deepstream/`` holds:
- ``model.onnx``: the serving graph (``raw_input``): float 0–255 RGB ``[B,3,H,W]`` in, the model's
  mean/std (and BGR order) inside, softmax class scores ``scores`` FP32 ``[B,C,H,W]`` at the input size
  out (what nvinfer's semantic-segmentation output, ``network-type=2``, parses; its
  ``segmentation-threshold`` is then a probability). Parity-gated against torch before it is kept.
- ``config_infer_primary_segmentation.txt``: the ``[property]`` group (keys of nvinfer's documented
  configuration file). nvinfer's preprocessing is ``y = net-scale-factor * (x - offsets[c])`` on the
  0–255 pixels in ``model-color-format`` order; with the normalisation in the graph it must hand the
  pixels over unchanged: ``net-scale-factor=1``, ``offsets=0;0;0``, RGB (``model-color-format=0``).
- ``labels.txt`` (one class per line), ``deepstream_segment.py`` (sample app, pyds) and ``README.md``.

nvinfer builds its TensorRT engine from the ONNX on the device at first start and writes it as
``model-engine-file`` (the name nvinfer gives it: ``<onnx>_b<batch>_gpu<id>_<fp32|fp16|int8>.engine``),
so later starts load it. The engine is a plain TensorRT plan; no metadata is ever put inside it.
"""
from __future__ import annotations

from sfda_deploy.errors import SfdaError
from sfda_deploy.export.export_settings import ExportSettings
from sfda_deploy.export.raw_input import check_raw_input, export_raw_input
from sfda_deploy.export.targets import TargetJob, copy_sample, staged_dir
from sfda_deploy.messages import say

CONFIG_NAME = "config_infer_primary_segmentation.txt"
OUTPUT_BLOB = "scores"
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer's network-mode
ENGINE_PRECISION = {0: "fp32", 1: "int8", 2: "fp16"}  # how nvinfer names the engine it builds


def network_mode(precision: str) -> int:
    """nvinfer's ``network-mode`` for an export precision: 0 FP32, 1 INT8, 2 FP16."""
    if precision not in NETWORK_MODES:
        raise SfdaError(f"precision {precision!r} has no nvinfer network-mode: use fp32, fp16 or int8")
    return NETWORK_MODES[precision]


def engine_name(onnx_name: str, batch: int, gpu_id: int, mode: int) -> str:
    """The engine file nvinfer writes beside the ONNX after building it (and loads on later starts)."""
    return f"{onnx_name}_b{batch}_gpu{gpu_id}_{ENGINE_PRECISION[mode]}.engine"


def nvinfer_properties(num_classes: int, imgsz: tuple[int, int], batch: int, precision: str, options,
                       onnx_name: str = "model.onnx") -> dict[str, str]:
    """The ``[property]`` group of a primary semantic-segmentation nvinfer, in file order.

    Args:
        options: ``targets.DeepStreamOptions`` (segmentation threshold, GPU id, interval).
    """
    mode = network_mode(precision)
    h, w = imgsz
    return {
        "gpu-id": str(options.gpu_id),
        "net-scale-factor": "1.0",        # the graph normalises: nvinfer hands over 0-255 pixels unchanged
        "offsets": "0.0;0.0;0.0",
        "model-color-format": "0",        # RGB (the graph reorders to BGR itself when the model wants it)
        "onnx-file": onnx_name,
        "model-engine-file": engine_name(onnx_name, batch, options.gpu_id, mode),
        "labelfile-path": "labels.txt",
        "infer-dims": f"3;{h};{w}",
        "network-input-order": "0",       # NCHW
        "batch-size": str(batch),
        "network-mode": str(mode),
        "network-type": "2",              # semantic segmentation
        "num-detected-classes": str(num_classes),
        "segmentation-threshold": repr(float(options.segmentation_threshold)),
        "output-blob-names": OUTPUT_BLOB,
        "maintain-aspect-ratio": "0",     # stretch to the network size (as segment --resize stretch)
        "process-mode": "1",              # primary: whole frames
        "interval": str(options.interval),
        "gie-unique-id": "1",
    }


def format_properties(properties: dict[str, str]) -> str:
    """The GKeyFile text nvinfer reads: one ``[property]`` group, ``key=value`` lines."""
    lines = ["# nvinfer configuration written by sfda-deploy export --deepstream (see README.md beside it).",
             "[property]", *(f"{k}={v}" for k, v in properties.items())]
    return "\n".join(lines) + "\n"


def check(settings: ExportSettings) -> None:
    """The export's flags DeepStream cannot take (before anything is written)."""
    export_precision(settings)


def export_precision(settings: ExportSettings) -> str:
    """fp32 or fp16 from the export's flags (nvinfer builds the reduced precision from the FP32 graph)."""
    if settings.int8:
        raise SfdaError("--deepstream with --int8: nvinfer's INT8 needs a calibration cache made for the "
                        "DeepStream graph, which sfda-deploy does not write: export --deepstream with --fp16 "
                        "(network-mode=2) or without a precision flag (FP32)")
    return "fp16" if settings.fp16 else "fp32"


def write(job: TargetJob) -> dict:
    """Write ``deepstream/`` into the run directory; returns what ``report.json`` records of it."""
    settings, meta = job.settings, job.meta
    precision = export_precision(settings)
    folder = job.run_dir / "deepstream"
    with staged_dir(folder) as tmp:
        export_raw_input(job.model, meta, job.imgsz, "scores", settings.dynamic, settings.opset, tmp / "model.onnx")
        parity = check_raw_input(tmp / "model.onnx", job.model, meta, job.images, "scores",
                                 "DeepStream ONNX (0-255 input) vs torch")
        properties = nvinfer_properties(meta.num_classes, job.imgsz, settings.batch, precision, job.options)
        (tmp / CONFIG_NAME).write_text(format_properties(properties))
        (tmp / "labels.txt").write_text("\n".join(meta.classes.names) + "\n")
        copy_sample("deepstream_segment.py", tmp / "deepstream_segment.py")
        copy_sample("deepstream_README.md", tmp / "README.md",
                    {"CONFIG": CONFIG_NAME, "ENGINE": properties["model-engine-file"],
                     "H": str(job.imgsz[0]), "W": str(job.imgsz[1])})
    say(f"DeepStream: {folder}/ (argmax agreement with torch {parity['argmax_agreement']:.4f}%, "
        f"max |Δscore| {parity['max_abs_diff']:.2e}); on the Jetson: python3 deepstream_segment.py VIDEO.mp4")
    return {"folder": str(folder), "config": str(folder / CONFIG_NAME), "onnx": str(folder / "model.onnx"),
            "network_mode": int(properties["network-mode"]), "parity": parity}
