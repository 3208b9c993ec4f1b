"""Commands that deploy: export, verify, segment, benchmark."""
from __future__ import annotations

import click

from sfda_deploy import config as C
from sfda_deploy import config_values as CV
from sfda_deploy.adapt.online import ONLINE_METHODS
from sfda_deploy.cli.base import _GIVEN, _config_option, _make_config, _name_option, _opt, _parse_sets, _stack, cli
from sfda_deploy.cli.target_flags import target_flags, target_overrides
from sfda_deploy.onnxrt import GRAPH_OPTIMIZATIONS


# -------------------------------------------------------------------------------- export
@cli.command()
@click.argument("checkpoint", required=False)
@_config_option
@_opt(C.ExportConfig, "onnx", "--onnx", is_flag=True, hidden=True)  # accepted, does nothing: the ONNX is always written
@_opt(C.ExportConfig, "trt", "--trt/--no-trt", help="Also build a TensorRT engine (needs an NVIDIA GPU with "
      "TensorRT; elsewhere the ONNX is written and the command to build the engine on the GPU is printed). "
      "CHECKPOINT may then be an exported .onnx.")
@_opt(C.ExportConfig, "imgsz", "--imgsz", nargs=2, type=int, help="H W (default: the checkpoint's).")
@_opt(C.ExportConfig, "dynamic", "--dynamic/--static", help="Free batch and size (dynamic) or fixed ones (static).")
@_opt(C.ExportConfig, "batch", "--batch", type=int, help="Batch of a static export (a dynamic one's optimum).")
@_opt(C.ExportConfig, "max_batch", "--max-batch", type=int,
      help="Largest batch of a --dynamic engine (default: --batch); engine memory grows with it.")
@_opt(C.ExportConfig, "max_imgsz", "--max-imgsz", nargs=2, type=int,
      help="Largest H W of a --dynamic engine (default: the export size); engine memory grows with it.")
@_opt(C.ExportConfig, "opset", "--opset", type=int, help="ONNX opset (17 or newer).")
@_opt(C.ExportConfig, "output", "--output", type=click.Choice(["logits", "mask"]),
      help="What the model returns: class scores [B,C,H,W] or the label map [B,H,W] (argmax inside).")
@_opt(C.ExportConfig, "mask_dtype", "--mask-dtype", type=click.Choice(["int32", "uint8"]),
      help="Label map type of --output mask.")
@_opt(C.ExportConfig, "fp16", "--fp16/--no-fp16", help="Also a half-precision ONNX (and engine), parity-checked.")
@_opt(C.ExportConfig, "int8", "--int8/--no-int8", help="Also an INT8 Q/DQ ONNX for TensorRT (model_int8.onnx), "
      "calibrated on --calib-data.")
@_opt(C.ExportConfig, "int8_cpu", "--int8-cpu/--no-int8-cpu", help="Also an INT8 ONNX for ONNX Runtime on CPU "
      "(model_int8_cpu.onnx: faster than fp32 there, unlike the TensorRT file), calibrated on --calib-data.")
@_opt(C.ExportConfig, "calib_data", "--calib-data", help="Target frames (dir or video) for INT8.")
@_opt(C.ExportConfig, "calib_count", "--calib-count", type=int, help="Frames used for INT8 calibration.")
@_opt(C.ExportConfig, "workspace", "--workspace", type=float, help="TensorRT workspace, GB.")
@_opt(C.ExportConfig, "verify_data", "--verify-data",
      help="Images (folder or video) for the parity gate (default: the val images of the data the checkpoint "
           "was adapted on, if still here; else generated frames).")
@_opt(C.ExportConfig, "device", "--device", help="Where the torch reference runs (cpu, cuda, cuda:N); engines "
      "always build on the GPU.")
@_opt(C.ExportConfig, "name", "--name", help="Run name: outputs go to runs/export/NAME (default: the checkpoint's "
      "run name).")
@target_flags
@click.pass_context
def export(ctx, **_):
    """Export a checkpoint to ONNX (and a TensorRT engine), with parity checks.

    Outputs go to runs/export/NAME: model.onnx (+ model_fp16.onnx, model_int8.onnx for TensorRT,
    model_int8_cpu.onnx for ONNX Runtime on CPU, model.engine with
    its model.engine.json), deepstream/ and triton/ (--deepstream, --triton) and report.json (parity
    of each file against torch).

    \b
    Example:
      sfda-deploy export runs/adapt/atp/model.safetensors
      sfda-deploy export runs/adapt/atp/model.safetensors --trt --fp16
      sfda-deploy export runs/adapt/atp/model.safetensors --deepstream --triton
    """
    from sfda_deploy.commands.export import run_export

    run_export(_make_config(ctx, C.ExportConfig, **target_overrides(ctx)))


@cli.command()
@click.argument("model_a", required=False)
@click.argument("model_b", required=False)
@_config_option
@_opt(C.VerifyConfig, "data", "--data", help="Images (folder, with labels in the Cityscapes layout for mIoU, or a "
      "video) to compare on (default: 4 generated frames, agreement only).")
@_opt(C.VerifyConfig, "max_images", "--max-images", type=int, help="Compare on the first N images.")
@_opt(C.VerifyConfig, "device", "--device", help="cpu, cuda or cuda:N.")
@_name_option(C.VerifyConfig, "verify")
@click.pass_context
def verify(ctx, **_):
    """Compare two of checkpoint / ONNX / engine on the same images (run in turn: A, B, A, B ...).

    Outputs go to runs/verify/NAME/report.json (agreement, |Δlogit|, mIoU of each, median latency).

    \b
    Example:
      sfda-deploy verify model.safetensors model.onnx --data frames/
    """
    from sfda_deploy.commands.verify import run_verify

    run_verify(_make_config(ctx, C.VerifyConfig))


def _runtime_options(cls):
    """The options ``segment`` and ``benchmark`` share: which model, run how and where."""
    options = [
        _opt(cls, "model", "--model", help="Checkpoint, .onnx or .engine (default: the bundled DEMO source model, "
             "not adapted)."),
        _opt(cls, "backend", "--backend", metavar="[" + "|".join(CV.CHOICES["backend"]) + "]",
             help="auto: by file (.safetensors torch, .onnx onnxruntime, .engine tensorrt)."),
        _opt(cls, "device", "--device", help="cpu, cuda or cuda:N."),
        _opt(cls, "imgsz", "--imgsz", nargs=2, type=int, metavar="H W",
             help="Model input size (default: the model's)."),
        _opt(cls, "batch", "--batch", type=int, help="Frames per forward pass."),
        _opt(cls, "threads", "--threads", type=int,
             help="CPU threads of torch / ONNX Runtime (default: the cores this process may use)."),
        _opt(cls, "ort_opt", "--ort-opt", type=click.Choice(GRAPH_OPTIMIZATIONS),
             help="ONNX Runtime graph optimisation. auto: on CPU 'extended' (no NCHWc layout) for DeepLabV2 "
                  "at 512x1024 and up, 'all' otherwise (measured faster; the note says which ran)."),
    ]
    return _stack(options)


# ------------------------------------------------------------------------------- segment
@cli.command()
@click.argument("source", nargs=-1)
@_config_option
@_runtime_options(C.SegmentConfig)
@_opt(C.SegmentConfig, "resize", "--resize", type=click.Choice(["letterbox", "stretch"]),
      help="Frames of another aspect than the model input: pad (keep aspect) or stretch.")
@_opt(C.SegmentConfig, "vid_stride", "--vid-stride", type=int, help="Segment every N-th frame of a video.")
@_opt(C.SegmentConfig, "alpha", "--alpha", type=float, help="Opacity of the class colours (0: frame only, 1: colours only).")
@_opt(C.SegmentConfig, "save_video", "--save-video/--no-save-video",
      help="Overlay video (videos, streams) or overlay PNGs (images), with legend.png beside.")
@_opt(C.SegmentConfig, "legend", "--legend/--no-legend", help="Draw the classes in view into the overlay.")
@_opt(C.SegmentConfig, "save_masks", "--save-masks/--no-save-masks", help="One label PNG per frame in masks/.")
@_opt(C.SegmentConfig, "mask_format", "--mask-format", type=click.Choice(["trainid", "labelid", "color"]),
      help="Values of the mask PNGs: trainIds, Cityscapes labelIds (official evaluation) or palette colours.")
@_opt(C.SegmentConfig, "show_fps", "--show-fps/--no-show-fps", help="Write the running fps into the overlay.")
@_opt(C.SegmentConfig, "max_frames", "--max-frames", type=int, help="Stop after N frames (default: all).")
@_opt(C.SegmentConfig, "adapt", "--adapt", help="Adapt while segmenting (torch checkpoints): "
      + "; ".join(f"{m.name} ({m.description})" for m in ONLINE_METHODS.values())
      + ". On a LayerNorm model (segformer_*, daformer_*) tent and anchored train the LayerNorm affine "
      "parameters too.")
@_opt(C.SegmentConfig, "adapt_every", "--adapt-every", type=int, help="One adaptation update per K frames.")
@_opt(C.SegmentConfig, "adapt_reset", "--adapt-reset/--no-adapt-reset",
      help="Reset to the starting weights when the predictions drift or collapse (one log line per reset).")
@click.option("--adapt-set", "adapt_sets", multiple=True, metavar="KEY=VALUE",
              help="Hyper-parameter of the --adapt method (e.g. lr=1e-4, batch=2).")
@_opt(C.SegmentConfig, "labels", "--labels", help="Folder of labelId PNGs named like the frames (and "
      "conditions.csv): mIoU overall, per condition and per round.")
@_opt(C.SegmentConfig, "save_adapted", "--save-adapted/--no-save-adapted",
      help="Write the adapted weights (adapted.safetensors, for export) at the end.")
@_opt(C.SegmentConfig, "reconnect_after", "--reconnect-after", type=float, metavar="S",
      help="A webcam or stream without a frame for S seconds is reopened (files never are).")
@_opt(C.SegmentConfig, "reconnect_tries", "--reconnect-tries", type=int, metavar="N",
      help="Reopen attempts per drop, 1, 2, 4, 8, 8... s apart; then the run ends with its summary "
           "(-1: forever, for unattended cars).")
@_opt(C.SegmentConfig, "ray", "--ray/--no-ray", help="Spread the sources over a local Ray cluster: one worker "
      "per GPU, or per --threads CPUs (pip install 'sfda-deploy[ray]').")
@_opt(C.SegmentConfig, "ray_address", "--ray-address", metavar="ADDRESS",
      help="... or over a running Ray cluster (HEAD:6379; paths shared by every node).")
@_opt(C.SegmentConfig, "ray_actors", "--ray-actors", type=int, help="Ray workers (default: one per GPU or CPU slot).")
@_name_option(C.SegmentConfig, "segment")
@click.pass_context
def segment(ctx, adapt_sets, **_):
    """Segment images, a folder, a video, a webcam or a stream.

    Outputs go to runs/segment/NAME: overlay.mp4 (video, stream) or overlays/ (images), legend.png,
    masks/ (--save-masks), summary.json (fps, per-frame class shares, scores) and config.yaml.

    \b
    Example:
      sfda-deploy segment video.mp4 --model runs/export/atp/model.onnx
      sfda-deploy segment frames/ --save-masks --mask-format labelid
      sfda-deploy segment drive/drive.mp4 --model model.safetensors --adapt tent --labels drive/labels
      sfda-deploy segment drives/*.mp4 --model model.onnx --ray --save-masks   # one run, sources/<file>/ each
    """
    from sfda_deploy.commands.segment import run_segment

    ctx.params.pop("adapt_sets", None)  # --adapt-set adds to the config file's adapt_options (build_config)
    sources = ctx.params["source"]
    ctx.params["source"] = sources[0] if len(sources) == 1 else None  # SOURCE...: several only with --ray
    cfg = _make_config(ctx, C.SegmentConfig, adapt_options=_parse_sets(adapt_sets, "--adapt-set", "lr=1e-4"))
    if cfg.ray or cfg.ray_address or len(sources) > 1:
        from sfda_deploy.commands.fleet import run_fleet

        run_fleet(cfg, sources)
    else:
        run_segment(cfg)


# ----------------------------------------------------------------------------- benchmark
@cli.command()
@click.argument("models", nargs=-1)
@_config_option
@_runtime_options(C.BenchmarkConfig)
@_opt(C.BenchmarkConfig, "warmup", "--warmup", type=int, help="Untimed calls per model first.")
@_opt(C.BenchmarkConfig, "iters", "--iters", type=int, help="Timed rounds (one call of each model per round).")
@_opt(C.BenchmarkConfig, "compare", "--compare", multiple=True,
      help="Compare several models: --compare A B C (or repeat the flag); writes a table and a chart.")
@_opt(C.BenchmarkConfig, "json", "--json/--no-json", help="Print JSON for scripts.")
@_name_option(C.BenchmarkConfig, "benchmark")
@click.pass_context
def benchmark(ctx, models, **_):
    """Pure inference latency (median, p90, p99, spread) and fps of a model.

    MODELS: one model (the same as --model), or several to compare: they are timed in turn (A, B, A, B
    ...), so a busy machine slows all alike; a warning says when the spread shows it was busy.
    Outputs go to runs/benchmark/NAME: results.json, config.yaml, fps.png (several models).

    \b
    Example:
      sfda-deploy benchmark model.onnx --imgsz 1024 2048
      sfda-deploy benchmark --compare model.safetensors model.onnx model.engine
    """
    from sfda_deploy.commands.benchmark import models_to_time, run_benchmark

    ctx.params.pop("models", None)
    given = tuple(ctx.params["compare"]) if ctx.get_parameter_source("compare") in _GIVEN else ()
    model = ctx.params["model"] if ctx.get_parameter_source("model") in _GIVEN else None
    run_benchmark(_make_config(ctx, C.BenchmarkConfig, **models_to_time(models, model, given)))
