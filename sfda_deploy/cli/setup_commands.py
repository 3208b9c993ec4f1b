"""Commands that set the stage: demo, generate-data, evaluate, train-source, import-pth."""
from __future__ import annotations

import click

from sfda_deploy import config as C
from sfda_deploy.cli.base import (
    _config_option,
    _make_config,
    _name_option,
    _opt,
    _parse_sets,
    _target_options,
    _training_options,
    cli,
)
from sfda_deploy.models import model_names


# ---------------------------------------------------------------------------------- demo
@cli.command()
@_config_option
@_opt(C.DemoConfig, "name", "--name", help="Run name (runs/demo/NAME, never overwritten).")
@_opt(C.DemoConfig, "device", "--device", help="cpu or cuda.")
@_opt(C.DemoConfig, "data_dir", "--data-dir", help="Where to generate the synthetic benchmark.")
@_opt(C.DemoConfig, "size", "--size", nargs=2, type=int, help="H W of generated frames.")
@_opt(C.DemoConfig, "model", "--model", help="Source checkpoint (default: the bundled model).")
@_opt(C.DemoConfig, "images", "--images", type=int, help="Images per split and style.")
@_opt(C.DemoConfig, "seed", "--seed", type=int, help="Seed of the generated data and of the adaptation.")
@_opt(C.DemoConfig, "budget", "--budget", type=int,
      help="ATP iterations IN TOTAL, split evenly over its stages A, T, P (0: no adaptation; adapt's --iters is "
           "per stage).")
@click.option("--adapt-iters", "adapt_iters", type=int, hidden=True)  # the old name of --budget
@_opt(C.DemoConfig, "style", "--style", help="Target style the demo adapts to.")
@click.pass_context
def demo(ctx, adapt_iters, **_):
    """Run the whole flow on the built-in synthetic domain shift.

    Everything goes to runs/demo/NAME (data, tables, plots, adapted model, ONNX, overlay video);
    the demo ends with the list of what it wrote and the next commands to try.

    \b
    Example:
      sfda-deploy demo
      sfda-deploy demo --device cuda --budget 2000
    """
    from sfda_deploy.commands.demo import run_demo

    ctx.params.pop("adapt_iters", None)
    renamed = {}
    if adapt_iters is not None:
        click.echo(f"note: --adapt-iters is now --budget (ATP's iterations in all): ran --budget {adapt_iters}")
        renamed = {"budget": adapt_iters}
    run_demo(_make_config(ctx, C.DemoConfig, **renamed))


# ------------------------------------------------------------------------- generate-data
@cli.command("generate-data")
@_config_option
@_opt(C.GenerateDataConfig, "out", "--out", help="Output folder (default: runs/generate-data/NAME).")
@_opt(C.GenerateDataConfig, "styles", "--styles", help="Comma-separated styles: source, "
     "the calibrated (appearance) targets real, fog, night, rain, "
     "the stress styles fog-dense, night-dark, and the structured styles city2, suburb, autumn-rain, night-city, "
     "newtown, newtown-worn (default: all).")
@_opt(C.GenerateDataConfig, "train", "--train", type=int, help="Train images per style.")
@_opt(C.GenerateDataConfig, "val", "--val", type=int, help="Val images per style.")
@_opt(C.GenerateDataConfig, "size", "--size", nargs=2, type=int, help="H W of the images.")
@_opt(C.GenerateDataConfig, "seed", "--seed", type=int, help="Everything rendered is a function of the seed.")
@_opt(C.GenerateDataConfig, "name", "--name", help="Run name when --out is not given.")
@_opt(C.GenerateDataConfig, "drive", "--drive", help="Instead: a labelled drive written to this new folder: "
      "drive.mp4, labels/ (label PNGs, labels/conditions.csv) and drive.json.")
@_opt(C.GenerateDataConfig, "conditions", "--conditions", help="The drive's conditions (style names), in order.")
@_opt(C.GenerateDataConfig, "rounds", "--rounds", type=int, help="Times the drive repeats its conditions.")
@_opt(C.GenerateDataConfig, "condition_frames", "--condition-frames", type=int, help="Drive frames per condition.")
@_opt(C.GenerateDataConfig, "scene_frames", "--scene-frames", type=int, help="Drive frames per street.")
@click.pass_context
def generate_data(ctx, **_):
    """Render the built-in synthetic domain-shift benchmark (Cityscapes layout, one per style),
    or with --drive a labelled video drive through conditions.

    Outputs go to --out DIR (default: runs/generate-data/NAME), one dataset per style in DIR/<style>;
    with --drive: drive.mp4, drive.json and labels/ (one label PNG per frame, and labels/conditions.csv: the
    condition of each frame) in that folder.

    \b
    Example:
      sfda-deploy generate-data --out data/synth --train 300 --val 100 --size 128 256
      # the bundled model's recipe: ~1 h on a CPU (0.8 it/s); the defaults (batch 8, crop up to
      # 256x512) ran at 0.12 it/s on 256x512 images: 4.6 h for their 2000 iterations
      sfda-deploy train-source --target cityscapes --data-root data/synth/source --iters 3000 --batch 4 --crop 128 128
      sfda-deploy generate-data --drive data/drive --size 128 256 --conditions real,rain,fog,night,real --rounds 3
    """
    from sfda_deploy.commands.data import run_generate_data

    run_generate_data(_make_config(ctx, C.GenerateDataConfig))


# ------------------------------------------------------------------------------ evaluate
@cli.command()
@_config_option
@_opt(C.EvaluateConfig, "checkpoint", "--checkpoint", help="Model to run on the whole target split: a checkpoint "
      "(.safetensors), an exported .onnx (fp32, fp16 or INT8), a TensorRT .engine (GPU) or a run directory, on the "
      "backend segment runs it with.")
@_opt(C.EvaluateConfig, "predictions", "--predictions", help="Directory of <image stem>.png label maps.")
@_opt(C.EvaluateConfig, "pred_format", "--pred-format", type=click.Choice(["labelid", "trainid"]),
      help="Values in the --predictions PNGs: Cityscapes labelIds or trainIds.")
@_opt(C.EvaluateConfig, "class_set", "--class-set", help="Classes to score (default: the checkpoint's).")
@_target_options(C.EvaluateConfig, "Root folder of the labelled dataset.")
@_opt(C.EvaluateConfig, "split", "--split", help="Labelled split to score.")
@_opt(C.EvaluateConfig, "device", "--device", help="cpu, cuda or cuda:N.")
@_opt(C.EvaluateConfig, "batch", "--batch", type=int, help="Images per forward pass.")
@_opt(C.EvaluateConfig, "workers", "--workers", type=int, help="Data-loading processes (0: in the main process).")
@_opt(C.EvaluateConfig, "max_images", "--max-images", type=int, help="Score only the first N images (default: all).")
@_opt(C.EvaluateConfig, "imgsz", "--imgsz", nargs=2, type=int,
      help="Resize images to H W before the model, logits back to the label size (the DeepLabV2 lineage "
           "evaluates Cityscapes at 512 1024). Default: the size the model records (its training or export "
           "size), as segment runs it.")
@_name_option(C.EvaluateConfig, "evaluate")
@click.pass_context
def evaluate(ctx, **_):
    """Per-class IoU and mIoU of a model file (checkpoint, ONNX, engine) or of saved predictions.

    Outputs go to runs/evaluate/NAME: metrics.json, table.txt, iou.png, confusion.png, config.yaml.

    \b
    Example:
      sfda-deploy evaluate --checkpoint runs/adapt/atp/model.safetensors \\
          --target cityscapes --data-root DATA --split val
      sfda-deploy evaluate --checkpoint runs/export/atp/model_int8_cpu.onnx --data-root DATA
      sfda-deploy evaluate --predictions preds/ --target cityscapes --data-root DATA
    """
    from sfda_deploy.commands.evaluate import run_evaluate

    run_evaluate(_make_config(ctx, C.EvaluateConfig))


# -------------------------------------------------------------------------- train-source
@cli.command("train-source")
@_config_option
@_target_options(C.TrainSourceConfig, "Root folder of the labelled source dataset. No data? 'sfda-deploy "
                 "generate-data' writes the built-in benchmark (its 'source' style).")
@_opt(C.TrainSourceConfig, "split", "--split", help="Labelled split trained on.")
@_opt(C.TrainSourceConfig, "eval_split", "--eval-split", help="Labelled split scored during training.")
@_opt(C.TrainSourceConfig, "arch", "--arch", help=f"Model architecture: {model_names()} (docs/models.md).")
@_opt(C.TrainSourceConfig, "class_set", "--class-set", help="Classes predicted: cityscapes19, synthia16 or synthia13.")
@_opt(C.TrainSourceConfig, "normalization", "--normalization", type=click.Choice(["imagenet", "caffe"]),
      help="Input convention: imagenet (RGB, mean/std) or caffe (BGR, mean only).")
@_opt(C.TrainSourceConfig, "init", "--init", help="Checkpoint to start from (default: random initialisation).")
@_opt(C.TrainSourceConfig, "augment", "--augment/--no-augment",
      help="Photometric augmentation (colour jitter, blur, noise) of the labelled crops.")
@_training_options(C.TrainSourceConfig, "train-source", iters_help="Training iterations.", recipe="shown")
@_opt(C.TrainSourceConfig, "lr", "--lr", type=float, help="Base learning rate (the head's is 10x).")
@_opt(C.TrainSourceConfig, "optimizer", "--optimizer", type=click.Choice(["adamw", "sgd"]), help="Optimiser.")
@_opt(C.TrainSourceConfig, "eval_every", "--eval-every", type=int, help="Score every N iterations (0: at the end only).")
@click.pass_context
def train_source(ctx, **_):
    """Supervised training on a labelled dataset (to make a source model).

    Outputs go to runs/train-source/NAME: model.safetensors, metrics.json, losses.png, config.yaml,
    log.txt and last.pt.

    \b
    Example:
      sfda-deploy train-source --target gta5 --data-root GTA5 --arch deeplabv2_r101 --iters 20000
    """
    from sfda_deploy.commands.adapt import run_train_source

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
@_opt(C.ImportConfig, "pth_prefix", "--pth-prefix", type=click.Choice(["model", "ema_model", "imnet_model"]),
      help="Of a UDA trainer checkpoint (DAFormer, ATP): model = the student (default), ema_model = the teacher.")
@_opt(C.ImportConfig, "name", "--name", help="Run name: outputs go to runs/import/NAME (default: the file's stem).")
@click.option("--arch-kw", "arch_kws", multiple=True, metavar="KEY=VALUE",
              help="Architecture option, e.g. --arch-kw prediction_head=layer5.")
@click.pass_context
def import_pth(ctx, arch_kws, **_):
    """Convert a published checkpoint (.pth/.bin loaded weights-only, or .safetensors) into one with metadata.

    Layouts: the AdaptSegNet-lineage DeepLabV2, DAFormer/ATP (mmseg 0.x, also their UDA trainer files),
    NVlabs SegFormer, mmsegmentation SegFormer and Hugging Face transformers SegFormer; the detected one
    is named in the output. Outputs go to runs/import/NAME: model.safetensors and config.yaml.

    \b
    Example:
      sfda-deploy import-pth GTA5_source.pth --arch deeplabv2_r101 --normalization caffe
      sfda-deploy import-pth synthia.pth --arch deeplabv2_r101 --normalization caffe --class-set synthia16
      sfda-deploy import-pth atp_gta2cs.pth --arch daformer_mitb5 --normalization imagenet
      sfda-deploy import-pth model.safetensors --arch segformer_b0 --normalization imagenet
    """
    from sfda_deploy.commands.import_pth import run_import

    ctx.params.pop("arch_kws", None)
    arch_kwargs = _parse_sets(arch_kws, "--arch-kw", "prediction_head=layer5")  # added to the --config file's
    run_import(_make_config(ctx, C.ImportConfig, **({"arch_kwargs": arch_kwargs} if arch_kwargs else {})))
