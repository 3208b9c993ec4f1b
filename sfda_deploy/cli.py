"""The ``sfda-deploy`` command line: parse → config → call. No logic lives here.

Every command also reads ``--config file.yaml`` whose keys are the flags' names (flags win).
User errors (``SfdaError``, bad flags) print one line and exit with code 2.
"""
from __future__ import annotations

import os
import sys

import click
from click.core import ParameterSource

from sfda_deploy import __version__
from sfda_deploy import config as C
from sfda_deploy.errors import SfdaError

_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _opt(cls, field: str, *decls, **kw):
    """A Click option whose default (and help's 'default:') is the config dataclass's default."""
    kw.setdefault("default", C.default_of(cls, field))
    kw.setdefault("show_default", kw["default"] is not None and kw["default"] != ())
    return click.option(*decls, field, **kw)


def _config_option(f):
    return click.option("--config", "config", type=click.Path(dir_okay=False),
                        help="YAML file of options (same names as the flags; flags win).")(f)


def _make_config(ctx: click.Context, cls, **overrides):
    """Merge dataclass defaults < YAML < flags given on the command line."""
    yaml_values = C.read_yaml(ctx.params["config"]) if ctx.params.get("config") else {}
    flags = {k: v for k, v in ctx.params.items()
             if k != "config" and ctx.get_parameter_source(k) in _GIVEN}
    flags.update(overrides)
    return C.build_config(cls, yaml_values, flags)


class _Group(click.Group):
    """One line + exit 2 for every user error, also under ``CliRunner`` (tests) and ``python -m``."""

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except SfdaError as e:
            if os.environ.get("SFDA_DEBUG"):
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            hint = " (see --help)" if isinstance(e, click.UsageError) else ""
            click.echo(f"error: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sfda-deploy")
def cli():
    """Source-free domain adaptation for segmentation: adapt → export → segment.

    \b
    sfda-deploy demo                                     # the whole flow on built-in data
    sfda-deploy adapt --target cityscapes --data-root DATA --source CKPT --method atp
    sfda-deploy export CKPT --trt                        # ONNX first, then a TensorRT engine
    sfda-deploy segment video.mp4 --model model.onnx     # overlay video + masks + fps
    """


# ---------------------------------------------------------------------------------- demo
@cli.command()
@_config_option
@_opt(C.DemoConfig, "name", "--name", help="Run name (runs/demo/NAME, never overwritten).")
@_opt(C.DemoConfig, "device", "--device", help="cpu or cuda.")
@_opt(C.DemoConfig, "data_dir", "--data-dir", help="Where to generate the synthetic benchmark.")
@_opt(C.DemoConfig, "size", "--size", nargs=2, type=int, help="H W of generated frames.")
@_opt(C.DemoConfig, "model", "--model", help="Source checkpoint (default: the bundled model).")
@_opt(C.DemoConfig, "images", "--images", type=int, help="Images per split and style.")
@_opt(C.DemoConfig, "seed", "--seed", type=int)
@_opt(C.DemoConfig, "adapt_iters", "--adapt-iters", type=int, help="ATP iterations of the demo.")
@_opt(C.DemoConfig, "style", "--style", help="Target style the demo adapts to.")
@click.pass_context
def demo(ctx, **_):
    """Run the whole flow on the built-in synthetic domain shift.

    \b
    Example:
      sfda-deploy demo
      sfda-deploy demo --device cuda --adapt-iters 2000
    """
    from sfda_deploy.demo import run_demo

    run_demo(_make_config(ctx, C.DemoConfig))


# ------------------------------------------------------------------------- generate-data
@cli.command("generate-data")
@_config_option
@_opt(C.GenerateDataConfig, "out", "--out", help="Output folder (default: runs/generate-data/NAME).")
@_opt(C.GenerateDataConfig, "styles", "--styles", help="Comma-separated styles: source, real, fog, night.")
@_opt(C.GenerateDataConfig, "train", "--train", type=int, help="Train images per style.")
@_opt(C.GenerateDataConfig, "val", "--val", type=int, help="Val images per style.")
@_opt(C.GenerateDataConfig, "size", "--size", nargs=2, type=int, help="H W of the images.")
@_opt(C.GenerateDataConfig, "seed", "--seed", type=int)
@_opt(C.GenerateDataConfig, "name", "--name", help="Run name when --out is not given.")
@click.pass_context
def generate_data(ctx, **_):
    """Render the built-in synthetic domain-shift benchmark (Cityscapes layout, one per style).

    \b
    Example:
      sfda-deploy generate-data --out data/synth --train 300 --val 100 --size 128 256
      sfda-deploy train-source --target cityscapes --data-root data/synth/source
    """
    from sfda_deploy.data.synthetic import run_generate_data

    run_generate_data(_make_config(ctx, C.GenerateDataConfig))


# ------------------------------------------------------------------------------ evaluate
@cli.command()
@_config_option
@_opt(C.EvaluateConfig, "checkpoint", "--checkpoint", help="Model to run on the target split.")
@_opt(C.EvaluateConfig, "predictions", "--predictions", help="Directory of <image stem>.png label maps.")
@_opt(C.EvaluateConfig, "pred_format", "--pred-format", type=click.Choice(["labelid", "trainid"]))
@_opt(C.EvaluateConfig, "class_set", "--class-set", help="Classes to score (default: the checkpoint's).")
@_opt(C.EvaluateConfig, "target", "--target", help="Dataset kind (cityscapes, gta5, synthia, acdc, bdd100k).")
@_opt(C.EvaluateConfig, "data_root", "--data-root", help="Root folder of the dataset.")
@_opt(C.EvaluateConfig, "split", "--split")
@_opt(C.EvaluateConfig, "device", "--device")
@_opt(C.EvaluateConfig, "batch", "--batch", type=int)
@_opt(C.EvaluateConfig, "workers", "--workers", type=int)
@_opt(C.EvaluateConfig, "max_images", "--max-images", type=int)
@_opt(C.EvaluateConfig, "name", "--name")
@click.pass_context
def evaluate(ctx, **_):
    """Per-class IoU and mIoU of a checkpoint or of saved predictions.

    \b
    Example:
      sfda-deploy evaluate --checkpoint runs/adapt/atp/model.safetensors \\
          --target cityscapes --data-root DATA --split val
      sfda-deploy evaluate --predictions preds/ --target cityscapes --data-root DATA
    """
    from sfda_deploy.evaluate import run_evaluate

    run_evaluate(_make_config(ctx, C.EvaluateConfig))


# -------------------------------------------------------------------------- train-source
@cli.command("train-source")
@_config_option
@_opt(C.TrainSourceConfig, "target", "--target")
@_opt(C.TrainSourceConfig, "data_root", "--data-root")
@_opt(C.TrainSourceConfig, "split", "--split")
@_opt(C.TrainSourceConfig, "eval_split", "--eval-split")
@_opt(C.TrainSourceConfig, "arch", "--arch", help="Model architecture (see the registry).")
@_opt(C.TrainSourceConfig, "class_set", "--class-set")
@_opt(C.TrainSourceConfig, "normalization", "--normalization", type=click.Choice(["imagenet", "caffe"]))
@_opt(C.TrainSourceConfig, "init", "--init", help="Checkpoint to start from.")
@_opt(C.TrainSourceConfig, "augment", "--augment/--no-augment",
      help="Photometric augmentation (colour jitter, blur, noise) of the labelled crops.")
@_opt(C.TrainSourceConfig, "iters", "--iters", type=int)
@_opt(C.TrainSourceConfig, "batch", "--batch", type=int)
@_opt(C.TrainSourceConfig, "crop", "--crop", nargs=2, type=int)
@_opt(C.TrainSourceConfig, "lr", "--lr", type=float)
@_opt(C.TrainSourceConfig, "optimizer", "--optimizer", type=click.Choice(["adamw", "sgd"]))
@_opt(C.TrainSourceConfig, "amp", "--amp/--no-amp")
@_opt(C.TrainSourceConfig, "eval_every", "--eval-every", type=int)
@_opt(C.TrainSourceConfig, "device", "--device")
@_opt(C.TrainSourceConfig, "workers", "--workers", type=int)
@_opt(C.TrainSourceConfig, "seed", "--seed", type=int)
@_opt(C.TrainSourceConfig, "name", "--name")
@click.pass_context
def train_source(ctx, **_):
    """Supervised training on a labelled dataset (to make a source model).

    \b
    Example:
      sfda-deploy train-source --target gta5 --data-root GTA5 --arch deeplabv2_r101 --iters 20000
    """
    from sfda_deploy.adapt.api import run_train_source

    run_train_source(_make_config(ctx, C.TrainSourceConfig))


# -------------------------------------------------------------------------------- import
@cli.command("import-pth")
@click.argument("pth", required=False)
@_config_option
@_opt(C.ImportConfig, "arch", "--arch", help="Architecture of the weights (required), e.g. deeplabv2_r101.")
@_opt(C.ImportConfig, "normalization", "--normalization", type=click.Choice(["caffe", "imagenet"]),
      help="Input convention of the weights (required): caffe = BGR mean-only, imagenet = RGB mean/std.")
@_opt(C.ImportConfig, "class_set", "--class-set", help="Default: from the classifier's class count.")
@_opt(C.ImportConfig, "num_classes", "--num-classes", type=int, help="Default: read from the file.")
@_opt(C.ImportConfig, "align_corners", "--align-corners/--no-align-corners",
      help="Logits upsampling (default: the architecture's; DeepLabV2: align-corners).")
@_opt(C.ImportConfig, "input_size", "--input-size", nargs=2, type=int, help="H W the model runs at.")
@_opt(C.ImportConfig, "name", "--name", help="Run name (default: the file's stem).")
@click.option("--arch-kw", "arch_kws", multiple=True, metavar="KEY=VALUE",
              help="Architecture option, e.g. --arch-kw prediction_head=layer5.")
@click.pass_context
def import_pth(ctx, arch_kws, **_):
    """Convert a legacy .pth (loaded weights-only) into a checkpoint with metadata.

    \b
    Example:
      sfda-deploy import-pth GTA5_source.pth --arch deeplabv2_r101 --normalization caffe
      sfda-deploy import-pth synthia.pth --arch deeplabv2_r101 --normalization caffe --class-set synthia16
    """
    from sfda_deploy.checkpoint import run_import

    yaml_kwargs = {}
    if ctx.params.get("config"):
        yaml_kwargs = C.read_yaml(ctx.params["config"]).get("arch_kwargs") or {}
    ctx.params.pop("arch_kws", None)
    run_import(_make_config(ctx, C.ImportConfig, arch_kwargs={**yaml_kwargs, **_parse_sets(arch_kws, "--arch-kw", "prediction_head=layer5")}))


# --------------------------------------------------------------------------------- adapt
def _parse_sets(values, flag: str = "--set", example: str = "tau_n=0.05") -> dict:
    import yaml

    out = {}
    for item in values:
        if "=" not in item:
            raise SfdaError(f"{flag} expects KEY=VALUE, got '{item}': e.g. {flag} {example}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


@cli.command()
@_config_option
@_opt(C.AdaptConfig, "target", "--target")
@_opt(C.AdaptConfig, "data_root", "--data-root")
@_opt(C.AdaptConfig, "source", "--source", help="Source checkpoint, or .onnx for a black-box source.")
@_opt(C.AdaptConfig, "method", "--method", help="atp, ldbe, prsfda, hiast, cpsl.")
@_opt(C.AdaptConfig, "stages", "--stages", help="Stages to run, e.g. A,T,P.")
@_opt(C.AdaptConfig, "propagate", "--propagate/--no-propagate", help="Information propagation after the method.")
@_opt(C.AdaptConfig, "arch", "--arch", help="Student architecture (black-box source).")
@_opt(C.AdaptConfig, "class_set", "--class-set", help="Class set of a black-box .onnx without metadata.")
@_opt(C.AdaptConfig, "normalization", "--normalization", type=click.Choice(["imagenet", "caffe"]),
      help="Input convention of a black-box .onnx without metadata.")
@_opt(C.AdaptConfig, "split", "--split")
@_opt(C.AdaptConfig, "eval_split", "--eval-split")
@_opt(C.AdaptConfig, "iters", "--iters", type=int, help="Iterations per stage/round.")
@_opt(C.AdaptConfig, "batch", "--batch", type=int)
@_opt(C.AdaptConfig, "crop", "--crop", nargs=2, type=int)
@_opt(C.AdaptConfig, "lr", "--lr", type=float)
@_opt(C.AdaptConfig, "amp", "--amp/--no-amp")
@_opt(C.AdaptConfig, "eval_every", "--eval-every", type=int)
@_opt(C.AdaptConfig, "resume", "--resume", help="Run directory to continue.")
@_opt(C.AdaptConfig, "device", "--device")
@_opt(C.AdaptConfig, "workers", "--workers", type=int)
@_opt(C.AdaptConfig, "seed", "--seed", type=int)
@_opt(C.AdaptConfig, "name", "--name")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Method hyper-parameter.")
@click.pass_context
def adapt(ctx, sets, **_):
    """Adapt a source model to unlabelled target images (source-free).

    \b
    Example:
      sfda-deploy adapt --target cityscapes --data-root DATA --source CKPT --method atp
      sfda-deploy adapt --target folder --data-root frames/ --source CKPT --method atp --stages A,T
      sfda-deploy adapt --target cityscapes --data-root DATA --source model.onnx --arch mobilenetv2_aspp
    """
    from sfda_deploy.adapt.api import run_adapt

    yaml_options = {}
    if ctx.params.get("config"):
        yaml_options = C.read_yaml(ctx.params["config"]).get("options") or {}
    ctx.params.pop("sets", None)
    options = {**yaml_options, **_parse_sets(sets)}
    run_adapt(_make_config(ctx, C.AdaptConfig, options=options))


# ------------------------------------------------------------------------------- compare
@cli.command()
@_config_option
@_opt(C.CompareConfig, "target", "--target")
@_opt(C.CompareConfig, "data_root", "--data-root")
@_opt(C.CompareConfig, "source", "--source")
@_opt(C.CompareConfig, "methods", "--methods", help="Comma-separated methods (atp, ldbe, prsfda, hiast, cpsl).")
@_opt(C.CompareConfig, "eval_split", "--eval-split", help="Labelled split the mIoU is measured on.")
@_opt(C.CompareConfig, "oracle_miou", "--oracle-miou", type=float,
      help="mIoU of a target-supervised model: adds the 'gap closed' column.")
@_opt(C.CompareConfig, "amp", "--amp/--no-amp")
@_opt(C.CompareConfig, "iters", "--iters", type=int)
@_opt(C.CompareConfig, "batch", "--batch", type=int)
@_opt(C.CompareConfig, "crop", "--crop", nargs=2, type=int)
@_opt(C.CompareConfig, "device", "--device")
@_opt(C.CompareConfig, "workers", "--workers", type=int)
@_opt(C.CompareConfig, "seed", "--seed", type=int)
@_opt(C.CompareConfig, "name", "--name")
@_opt(C.CompareConfig, "resume", "--resume")
@click.pass_context
def compare(ctx, **_):
    """Run several methods with the same data, model and budget; write a report.

    \b
    Example:
      sfda-deploy compare --target cityscapes --data-root DATA --source CKPT \\
          --methods atp,ldbe,prsfda,hiast,cpsl --iters 2000
    """
    from sfda_deploy.adapt.compare import run_compare

    run_compare(_make_config(ctx, C.CompareConfig))


# -------------------------------------------------------------------------------- export
@cli.command()
@click.argument("checkpoint", required=False)
@_config_option
@_opt(C.ExportConfig, "onnx", "--onnx", is_flag=True,
      help="Write the ONNX (always done: it is the portable file and what --trt builds from).")
@_opt(C.ExportConfig, "trt", "--trt/--no-trt", help="Also build a TensorRT engine (needs a GPU).")
@_opt(C.ExportConfig, "imgsz", "--imgsz", nargs=2, type=int, help="H W (default: the checkpoint's).")
@_opt(C.ExportConfig, "dynamic", "--dynamic/--static")
@_opt(C.ExportConfig, "batch", "--batch", type=int)
@_opt(C.ExportConfig, "opset", "--opset", type=int)
@_opt(C.ExportConfig, "output", "--output", type=click.Choice(["logits", "mask"]))
@_opt(C.ExportConfig, "mask_dtype", "--mask-dtype", type=click.Choice(["int32", "uint8"]),
      help="Label map type of --output mask.")
@_opt(C.ExportConfig, "fp16", "--fp16/--no-fp16")
@_opt(C.ExportConfig, "int8", "--int8/--no-int8")
@_opt(C.ExportConfig, "calib_data", "--calib-data", help="Target frames (dir or video) for INT8.")
@_opt(C.ExportConfig, "calib_count", "--calib-count", type=int)
@_opt(C.ExportConfig, "workspace", "--workspace", type=float, help="TensorRT workspace, GB.")
@_opt(C.ExportConfig, "verify_data", "--verify-data", help="Images for the parity gate.")
@_opt(C.ExportConfig, "device", "--device")
@_opt(C.ExportConfig, "name", "--name")
@click.pass_context
def export(ctx, **_):
    """Export a checkpoint to ONNX (and a TensorRT engine), with parity checks.

    \b
    Example:
      sfda-deploy export runs/adapt/atp/model.safetensors
      sfda-deploy export runs/adapt/atp/model.safetensors --trt --fp16
    """
    from sfda_deploy.export.api import run_export

    run_export(_make_config(ctx, C.ExportConfig))


@cli.command()
@click.argument("model_a", required=False)
@click.argument("model_b", required=False)
@_config_option
@_opt(C.VerifyConfig, "data", "--data", help="Images (dir) to compare on.")
@_opt(C.VerifyConfig, "max_images", "--max-images", type=int)
@_opt(C.VerifyConfig, "device", "--device")
@_opt(C.VerifyConfig, "name", "--name")
@click.pass_context
def verify(ctx, **_):
    """Compare two of checkpoint / ONNX / engine on the same images.

    \b
    Example:
      sfda-deploy verify model.safetensors model.onnx --data frames/
    """
    from sfda_deploy.export.verify import run_verify

    run_verify(_make_config(ctx, C.VerifyConfig))


# ------------------------------------------------------------------------------- segment
@cli.command()
@click.argument("source", required=False)
@_config_option
@_opt(C.SegmentConfig, "model", "--model", help="Checkpoint, .onnx or .engine (default: bundled model).")
@_opt(C.SegmentConfig, "backend", "--backend", type=click.Choice(["auto", "torch", "onnxruntime", "tensorrt"]))
@_opt(C.SegmentConfig, "device", "--device", help="cpu, cuda or cuda:N.")
@_opt(C.SegmentConfig, "imgsz", "--imgsz", nargs=2, type=int)
@_opt(C.SegmentConfig, "resize", "--resize", type=click.Choice(["letterbox", "stretch"]),
      help="Frames of another aspect than the model input: pad (keep aspect) or stretch.")
@_opt(C.SegmentConfig, "batch", "--batch", type=int)
@_opt(C.SegmentConfig, "vid_stride", "--vid-stride", type=int)
@_opt(C.SegmentConfig, "alpha", "--alpha", type=float)
@_opt(C.SegmentConfig, "save_video", "--save-video/--no-save-video")
@_opt(C.SegmentConfig, "save_masks", "--save-masks/--no-save-masks")
@_opt(C.SegmentConfig, "mask_format", "--mask-format", type=click.Choice(["trainid", "labelid", "color"]))
@_opt(C.SegmentConfig, "show_fps", "--show-fps/--no-show-fps")
@_opt(C.SegmentConfig, "max_frames", "--max-frames", type=int)
@_opt(C.SegmentConfig, "threads", "--threads", type=int, help="CPU threads (default: all cores).")
@_opt(C.SegmentConfig, "name", "--name")
@click.pass_context
def segment(ctx, **_):
    """Segment images, a folder, a video, a webcam or a stream.

    \b
    Example:
      sfda-deploy segment video.mp4 --model runs/export/atp/model.onnx
      sfda-deploy segment frames/ --save-masks --mask-format labelid
    """
    from sfda_deploy.runtime.segment import run_segment

    run_segment(_make_config(ctx, C.SegmentConfig))


# ----------------------------------------------------------------------------- benchmark
@cli.command()
@_config_option
@_opt(C.BenchmarkConfig, "model", "--model")
@_opt(C.BenchmarkConfig, "backend", "--backend", type=click.Choice(["auto", "torch", "onnxruntime", "tensorrt"]))
@_opt(C.BenchmarkConfig, "device", "--device")
@_opt(C.BenchmarkConfig, "imgsz", "--imgsz", nargs=2, type=int)
@_opt(C.BenchmarkConfig, "batch", "--batch", type=int)
@_opt(C.BenchmarkConfig, "warmup", "--warmup", type=int)
@_opt(C.BenchmarkConfig, "iters", "--iters", type=int)
@_opt(C.BenchmarkConfig, "compare", "--compare", multiple=True, help="Several models (repeat the flag).")
@_opt(C.BenchmarkConfig, "json", "--json/--no-json", help="Print JSON for scripts.")
@_opt(C.BenchmarkConfig, "threads", "--threads", type=int, help="CPU threads (default: all cores).")
@_opt(C.BenchmarkConfig, "name", "--name")
@click.pass_context
def benchmark(ctx, **_):
    """Pure inference latency (mean, p50, p90, p99) and fps of a model.

    \b
    Example:
      sfda-deploy benchmark --model model.onnx --imgsz 1024 2048
      sfda-deploy benchmark --compare model.safetensors --compare model.onnx
    """
    from sfda_deploy.runtime.bench import run_benchmark

    run_benchmark(_make_config(ctx, C.BenchmarkConfig))


# ---------------------------------------------------------------------------- entry point
def main(argv=None) -> None:
    """Console entry point (``sfda-deploy``, ``python -m sfda_deploy``)."""
    cli.main(args=argv, prog_name="sfda-deploy")


if __name__ == "__main__":
    main()
