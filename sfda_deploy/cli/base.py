"""The ``sfda-deploy`` group and what every command shares: config merging, the error policy.

Every command also reads ``--config file.yaml`` whose keys are the flags' names (flags win).
User errors (``SfdaError``, bad flags) print one line and exit with code 2.
"""
from __future__ import annotations

import os
import sys
import time

import click
from click.core import ParameterSource

from sfda_deploy import config_build as CB
from sfda_deploy.adapt.distributed import leave_group
from sfda_deploy.errors import SfdaError
from sfda_deploy.runs import forget_created_runs, log_command
from sfda_deploy.threads import limit_torch_threads
from sfda_deploy.version import __version__

_GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _opt(cls, field: str, *decls, **kw):
    """A Click option whose default (and help's 'default:') is the config dataclass's default."""
    kw.setdefault("default", CB.default_of(cls, field))
    kw.setdefault("show_default", kw["default"] is not None and kw["default"] != ())
    return click.option(*decls, field, **kw)


def _stack(options):
    """One decorator applying ``options`` so that they show in ``--help`` in the order listed."""
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def _training_options(cls, command: str, iters_help: str, recipe: str = "the recipe's"):
    """The options every command that trains shares: budget, device, loader, seed and run name."""
    return _stack([
        _opt(cls, "iters", "--iters", type=int, help=iters_help),
        _opt(cls, "batch", "--batch", type=int, help=f"Images per iteration (default: {recipe}).", metavar="N"),
        _opt(cls, "crop", "--crop", nargs=2, type=int, metavar="H W",
             help=f"Random training crop (default: {recipe}, cut down to the images when larger)."),
        _opt(cls, "amp", "--amp/--no-amp", help="Mixed precision (bf16/fp16) on CUDA; no effect on CPU."),
        _opt(cls, "device", "--device", help="cpu, cuda or cuda:N."),
        _opt(cls, "workers", "--workers", type=int, help="Data-loading processes (0: in the main process)."),
        _opt(cls, "seed", "--seed", type=int, help="Seed of crops, augmentations and initialisation."),
        _opt(cls, "name", "--name", help=f"Run name: outputs go to runs/{command}/NAME (never overwritten: NAME-2, ...)."),
    ])


def _target_options(cls, data_help: str):
    """``--target`` and ``--data-root``: which dataset layout, and where it is."""
    from sfda_deploy.data import TARGETS

    return _stack([
        _opt(cls, "target", "--target", help=f"Dataset layout of --data-root: {', '.join(TARGETS)}."),
        _opt(cls, "data_root", "--data-root", help=data_help),
    ])


def _name_option(cls, command: str):
    return _opt(cls, "name", "--name", help=f"Run name: outputs go to runs/{command}/NAME (never overwritten).")


def _config_option(f):
    return click.option("--config", "config", type=click.Path(dir_okay=False),
                        help="YAML file of options (same names as the flags; flags win).")(f)


def _make_config(ctx: click.Context, cls, **overrides):
    """Merge dataclass defaults < YAML < flags given on the command line."""
    yaml_values = CB.read_yaml(ctx.params["config"]) if ctx.params.get("config") else {}
    flags = {k: v for k, v in ctx.params.items()
             if k != "config" and ctx.get_parameter_source(k) in _GIVEN}
    flags.update(overrides)
    return CB.build_config(cls, yaml_values, flags)


class _Group(click.Group):
    """One line + exit 2 for every user error, also under ``CliRunner`` (tests) and ``python -m``."""

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        forget_created_runs()
        limit_torch_threads()  # no busy thread beyond the cores this process may use
        start, outcome = time.perf_counter(), "finished"
        try:
            code = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except SfdaError as e:
            outcome = f"error: {e}"
            if os.environ.get("SFDA_DEBUG"):
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            outcome = "aborted"
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            hint = " (see --help)" if isinstance(e, click.UsageError) else ""
            outcome = f"error: {e.format_message()}"
            click.echo(f"error: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            outcome = "interrupted"
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # a bug: still say in the run's log that the command did not finish
            outcome = f"failed: {type(e).__name__}: {e}"
            raise
        finally:
            leave_group(outcome == "finished")
            log_command(argv, outcome, time.perf_counter() - start)
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




def _parse_sets(values, flag: str = "--set", example: str = "tau_n=0.05") -> dict:
    import yaml

    out = {}
    for item in values:
        if "=" not in item:
            raise SfdaError(f"{flag} expects KEY=VALUE, got '{item}': e.g. {flag} {example}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out




# ---------------------------------------------------------------------------- entry point
def main(argv=None) -> None:
    """Console entry point (``sfda-deploy``, ``python -m sfda_deploy``)."""
    cli.main(args=argv, prog_name="sfda-deploy")
