"""Commands that adapt: adapt, compare."""
from __future__ import annotations

import click

from sfda_deploy import config as C
from sfda_deploy.cli.base import _config_option, _make_config, _opt, _parse_sets, _stack, _training_options, cli


def _selection_options(cls):
    """Label-free checkpoint selection and the fallback to the source (sfda_deploy/adapt/selection.py)."""
    return _stack([
        _opt(cls, "select_by", "--select-by",
             help="Label-free criterion that picks the shipped checkpoint: im (information maximisation), snd "
                  "(soft neighbourhood density), mix (mixed-sample probe). Every criterion is recorded; the "
                  "default is provisional until the benchmark's selection-regret table chooses it."),
        _opt(cls, "select_every", "--select-every", type=int,
             help="Score the model every N iterations (and at each stage end); 0: stage ends only; "
                  "default: 4 points per stage."),
        _opt(cls, "select_images", "--select-images", type=int,
             help="Target images the criteria are computed on (a fixed seeded sample; val split if it exists)."),
        _opt(cls, "fallback", "--fallback/--no-fallback",
             help="Ship the source model when the selected checkpoint does not beat it on the criterion by "
                  "--fallback-margin, or collapsed (a class vanished or one took over)."),
        _opt(cls, "fallback_margin", "--fallback-margin", type=float,
             help="Relative margin over the source's criterion score (0.01 = 1%)."),
    ])


@cli.command()
@_config_option
@_opt(C.AdaptConfig, "target", "--target")
@_opt(C.AdaptConfig, "data_root", "--data-root")
@_opt(C.AdaptConfig, "source", "--source", help="Source checkpoint, or .onnx for a black-box source.")
@_opt(C.AdaptConfig, "method", "--method", help="atp, ldbe, prsfda, hiast, cpsl; adabn: the training-free "
      "baseline (BatchNorm statistics re-estimated on the target, seconds).")
@_opt(C.AdaptConfig, "stages", "--stages", help="Stages to run, e.g. A,T,P.")
@_opt(C.AdaptConfig, "propagate", "--propagate/--no-propagate", help="Information propagation after the method.")
@_opt(C.AdaptConfig, "arch", "--arch", help="Student architecture (black-box source).")
@_opt(C.AdaptConfig, "class_set", "--class-set", help="Class set of a black-box .onnx without metadata.")
@_opt(C.AdaptConfig, "normalization", "--normalization", type=click.Choice(["imagenet", "caffe"]),
      help="Input convention of a black-box .onnx without metadata.")
@_opt(C.AdaptConfig, "split", "--split")
@_opt(C.AdaptConfig, "eval_split", "--eval-split")
@_training_options(C.AdaptConfig, iters_help="Iterations per stage (ATP runs this many in each of A, T and "
                                              "P; a method's rounds split its stage's iterations). Not for "
                                              "adabn, which trains nothing.")
@_opt(C.AdaptConfig, "lr", "--lr", type=float)
@_opt(C.AdaptConfig, "eval_every", "--eval-every", type=int)
@_selection_options(C.AdaptConfig)
@_opt(C.AdaptConfig, "resume", "--resume", help="Run directory to continue.")
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
@_opt(C.CompareConfig, "methods", "--methods", help="Comma-separated methods (atp, ldbe, prsfda, hiast, cpsl). AdaBN always runs too, as the "
      "baseline every method's gain is measured over.")
@_opt(C.CompareConfig, "eval_split", "--eval-split", help="Labelled split the mIoU is measured on.")
@_opt(C.CompareConfig, "oracle_miou", "--oracle-miou", type=float,
      help="mIoU of a target-supervised model: adds the 'gap closed' column.")
@_selection_options(C.CompareConfig)
@_training_options(C.CompareConfig, iters_help="Iterations, total per method, split evenly over its stages "
                                                "(ATP: a third each for A, T, P; LDBE: half each for LD, "
                                                "BE); the AdaBN baseline takes none.")
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
