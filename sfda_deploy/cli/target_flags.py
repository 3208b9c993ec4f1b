"""``export``'s deployment-target flags, one per registered target (``export.targets.TARGETS``):
``--deepstream``, ``--triton``, ... and ``--target-set TARGET.OPTION=VALUE`` for their options."""
from __future__ import annotations

import click

from sfda_deploy import config_build as CB
from sfda_deploy.cli.base import _parse_sets, _stack
from sfda_deploy.export.targets import TARGETS


def target_flags(command):
    """One ``--<name>`` flag per registered target, then ``--target-set``."""
    options = [click.option(f"--{name}", f"target_{name}", is_flag=True, help=target.help)
               for name, target in TARGETS.items()]
    options.append(click.option("--target-set", "target_sets", multiple=True, metavar="TARGET.OPTION=VALUE",
                                help="An option of a target, e.g. triton.instances=2, "
                                     "deepstream.segmentation_threshold=0.5 (README, 'Deploy')."))
    return _stack(options)(command)


def target_overrides(ctx: click.Context) -> dict:
    """The config values the target flags give (removed from ``ctx.params``): ``targets`` (the flags add to
    the ``--config`` file's list) and ``target_options`` (added to the file's key by key)."""
    flagged = [name for name in TARGETS if ctx.params.pop(f"target_{name}", False)]
    sets = ctx.params.pop("target_sets", ())
    out = {}
    if flagged:
        from_file = CB.read_yaml(ctx.params["config"]).get("targets") if ctx.params.get("config") else None
        from_file = [from_file] if isinstance(from_file, str) else list(from_file or [])
        out["targets"] = tuple(dict.fromkeys([*from_file, *flagged]))
    if sets:
        out["target_options"] = _parse_sets(sets, "--target-set", "triton.instances=2")
    return out
