"""Commands that adapt: adapt, compare."""
from __future__ import annotations

import click

from sfda_deploy import config as C
from sfda_deploy.cli.base import (
    _config_option,
    _make_config,
    _opt,
    _parse_sets,
    _stack,
    _target_options,
    _training_options,
    cli,
)

_DATA = ("Target images (unlabelled for training; a labelled --eval-split is scored). No data? "
         "'sfda-deploy generate-data' writes the built-in benchmark.")


def _selection_options(cls):
    """Label-free checkpoint selection and the fallback to the source (sfda_deploy/adapt/selection/)."""
    return _stack([
        _opt(cls, "select_by", "--select-by",
             help="Label-free criterion that picks the shipped checkpoint: im (information maximisation), snd "
                  "(soft neighbourhood density), mix (mixed-sample probe), or a composite (im+snd, im+mix, snd+mix, "
                  "im+snd+mix: the mean of the parts' gains relative to AdaBN's scores). Every criterion is "
                  "recorded. Default im+snd: the lowest worst-case regret of what ships on the benchmark's dev "
                  "runs (docs/benchmark.md, \"Selection on benchmark v3\")."),
        _opt(cls, "select_every", "--select-every", type=int,
             help="Score the model every N iterations (and at each stage end); 0: stage ends only; "
                  "default: 4 points per stage."),
        _opt(cls, "select_images", "--select-images", type=int,
             help="Target images the criteria are computed on (a fixed seeded sample; val split if it exists)."),
        _opt(cls, "fallback", "--fallback/--no-fallback",
             help="Ship the AdaBN baseline (or the source) when the selected checkpoint does not beat it on the "
                  "criterion by --fallback-margin, fell below the baseline's --floor-by, or collapsed (a class "
                  "vanished or one took over)."),
        _opt(cls, "fallback_margin", "--fallback-margin", type=float,
             help="Relative margin over the fallback's criterion score (0.01 = 1%)."),
        _opt(cls, "fallback_by", "--fallback-by",
             help="Criterion the selected checkpoint must beat the fallback on (im, snd, mix, or a composite such "
                  "as im+mix: the mean of its parts' relative gains over AdaBN's scores). Default im+snd, as "
                  "--select-by: SND and mix alone can score the source above a far better adapted model."),
        _opt(cls, "fallback_to", "--fallback-to",
             help="What ships on fallback: better (the AdaBN baseline where it beats the source on --fallback-by, "
                  "else the source) or adabn (the AdaBN baseline whenever it was built and did not collapse)."),
        _opt(cls, "baseline", "--baseline",
             help="What the run is judged against and falls back to: adabn (the source with BatchNorm statistics "
                  "re-estimated on the target, one pass before training; the source when AdaBN does not beat "
                  "it) or source."),
        _opt(cls, "floor_by", "--floor-by",
             help="Criteria (comma-separated, or none) a checkpoint must keep within --floor-tolerance of the "
                  "AdaBN baseline's to ship. Default snd: training that over-sharpens features lowers it."),
        _opt(cls, "floor_tolerance", "--floor-tolerance", type=float,
             help="Relative slack of the floor (0.03 = 3% below the baseline's score)."),
        _opt(cls, "floor_sticky", "--floor-sticky/--no-floor-sticky",
             help="Once a checkpoint falls below the floor, no later checkpoint of the run ships (a later stage "
                  "can raise SND again without its predictions recovering)."),
        _opt(cls, "collapse_ref", "--collapse-ref",
             help="What a checkpoint's predicted-class shares are compared with to call it collapsed (a class "
                  "vanished or one took over): source (the source model's), adabn (the AdaBN baseline's: a "
                  "source that is confidently wrong about a class does not make its correction read as a "
                  "collapse) or agree (a class counts as present only where both predict it)."),
        _opt(cls, "stage_keep", "--stage-keep",
             help="What each stage hands to the next: last (its end) or best (its start when its end scores "
                  "lower on --select-by: a stage that made the model worse is undone)."),
    ])


@cli.command()
@_config_option
@_target_options(C.AdaptConfig, _DATA)
@_opt(C.AdaptConfig, "source", "--source", help="Source checkpoint (.safetensors), or .onnx for a black-box source.")
@_opt(C.AdaptConfig, "method", "--method", help="atp, ldbe, prsfda, hiast, cpsl; adabn: the training-free "
      "baseline (BatchNorm statistics re-estimated on the target, seconds); distill: only stage D, a student of "
      "--arch distilled from a black-box .onnx --source's predictions (every .onnx source runs it first).")
@_opt(C.AdaptConfig, "stages", "--stages", help="Stages to run, e.g. A,T,P.")
@_opt(C.AdaptConfig, "propagate", "--propagate/--no-propagate", help="Information propagation after the method.")
@_opt(C.AdaptConfig, "arch", "--arch", help="Student architecture (black-box source).")
@_opt(C.AdaptConfig, "class_set", "--class-set", help="Class set of a black-box .onnx without metadata.")
@_opt(C.AdaptConfig, "normalization", "--normalization", type=click.Choice(["imagenet", "caffe"]),
      help="Input convention of a black-box .onnx without metadata.")
@_opt(C.AdaptConfig, "split", "--split", help="Split adapted on (its labels, if any, are never read).")
@_opt(C.AdaptConfig, "eval_split", "--eval-split", help="Labelled split scored before and after each stage.")
@_training_options(C.AdaptConfig, "adapt", iters_help="Iterations PER STAGE (ATP runs this many in each of A, T "
                   "and P; a method's rounds split its stage's iterations). Default: the method's. Not for adabn, "
                   "which trains nothing.", recipe="the method's")
@_opt(C.AdaptConfig, "lr", "--lr", type=float, help="Base learning rate (default: the method's).")
@_opt(C.AdaptConfig, "eval_every", "--eval-every", type=int,
      help="Also score every N iterations (0: only before and after each stage).")
@_selection_options(C.AdaptConfig)
@_opt(C.AdaptConfig, "resume", "--resume", help="Run directory (runs/adapt/NAME) to continue where it stopped.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Method hyper-parameter, e.g. --set tau_n=0.05; '--set help' lists the keys of --method "
                   "with their defaults.")
@click.pass_context
def adapt(ctx, sets, **_):
    """Adapt a source model to unlabelled target images (source-free).

    Outputs go to runs/adapt/NAME: model.safetensors (+ stage_<S>.safetensors after each stage),
    metrics.json, losses.png, iou_before_after.png, previews/, config.yaml, log.txt and last.pt
    (for --resume).

    \b
    Example:
      sfda-deploy adapt --target cityscapes --data-root DATA --source CKPT --method atp
      sfda-deploy adapt --target folder --data-root frames/ --source CKPT --method atp --stages A,T
      sfda-deploy adapt --target cityscapes --data-root DATA --source model.onnx --arch mobilenetv2_aspp
    """
    from sfda_deploy.commands.adapt import run_adapt

    if "help" in sets:
        from sfda_deploy.adapt.methods import describe_options

        click.echo(describe_options(ctx.params["method"]))
        return
    ctx.params.pop("sets", None)
    options = _parse_sets(sets)  # added to the --config file's options, key by key
    run_adapt(_make_config(ctx, C.AdaptConfig, **({"options": options} if options else {})))


# ------------------------------------------------------------------------------- compare
@cli.command()
@_config_option
@_target_options(C.CompareConfig, _DATA)
@_opt(C.CompareConfig, "source", "--source", help="Source checkpoint (.safetensors).")
@_opt(C.CompareConfig, "methods", "--methods", help="Comma-separated methods (atp, ldbe, prsfda, hiast, cpsl). "
      "AdaBN always runs too, as the "
      "baseline every method's gain is measured over.")
@_opt(C.CompareConfig, "eval_split", "--eval-split", help="Labelled split the mIoU is measured on.")
@_opt(C.CompareConfig, "oracle_miou", "--oracle-miou", type=float,
      help="mIoU of a target-supervised model: adds the 'gap closed' column.")
@_selection_options(C.CompareConfig)
@_opt(C.CompareConfig, "budget", "--budget", type=int, help="Iterations IN TOTAL per method, split evenly over "
      "its stages (ATP: a third each for A, T, P; LDBE: half each for LD, BE): the same budget for every method; "
      "the AdaBN baseline takes none. Instead of --iters.")
@_training_options(C.CompareConfig, "compare", iters_help="Iterations PER STAGE of each method, as adapt's --iters "
                   "(methods with more stages then train longer; --budget gives each the same total). Default: "
                   "each method's.", recipe="each method's")
@_opt(C.CompareConfig, "resume", "--resume", help="Compare run directory (runs/compare/NAME) to continue.")
@click.pass_context
def compare(ctx, **_):
    """Run several methods with the same data, model and budget; write a report.

    Outputs go to runs/compare/NAME: report.md, compare.png, results.json, config.yaml and one
    adapt run per method under methods/.

    \b
    Example:
      sfda-deploy compare --target cityscapes --data-root DATA --source CKPT \\
          --methods atp,ldbe,prsfda,hiast,cpsl --budget 2000
    """
    from sfda_deploy.commands.compare import OLD_ITERS_NOTE, run_compare
    from sfda_deploy.config_build import read_yaml

    if ctx.params.get("config"):
        given = read_yaml(ctx.params["config"])
        if "iters" in given and "budget" not in given:
            click.echo(OLD_ITERS_NOTE.format(where=ctx.params["config"], iters=given["iters"]))
    run_compare(_make_config(ctx, C.CompareConfig))
