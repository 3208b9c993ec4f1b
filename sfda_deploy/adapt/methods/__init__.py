"""Recipes: name → ``Method`` (config dataclass + stages). See ``sfda_deploy/adapt/loop.py``.

A new recipe is one module ``methods/<name>.py`` defining ``<Name>Config`` and ``METHOD``, plus one
line here.
"""
from __future__ import annotations

import importlib

from sfda_deploy.classes import suggest
from sfda_deploy.errors import SfdaError

# name → module defining METHOD (imported lazily so one broken recipe does not break the others)
METHODS: dict[str, str] = {
    "supervised": "sfda_deploy.adapt.methods.supervised",
    "adabn": "sfda_deploy.adapt.methods.adabn",
    "atp": "sfda_deploy.adapt.methods.atp",
    "ldbe": "sfda_deploy.adapt.methods.ldbe",
    "prsfda": "sfda_deploy.adapt.methods.prsfda",
    "hiast": "sfda_deploy.adapt.methods.hiast",
    "cpsl": "sfda_deploy.adapt.methods.cpsl",
    "distill": "sfda_deploy.adapt.methods.distill",
}


def get_method(name: str):
    """The registered ``Method``; unknown names get the closest valid one."""
    if name not in METHODS:
        valid = sorted(m for m in METHODS if m != "supervised")
        raise SfdaError(f"unknown method '{name}'{suggest(name, valid)}: choose one of {', '.join(valid)}")
    return importlib.import_module(METHODS[name]).METHOD


def describe_options(name: str) -> str:
    """``adapt --set help``: the ``--set`` keys of a method with their defaults, and its stages."""
    import dataclasses

    method = get_method(name)
    stages = ", ".join(f"{s.name} ({s.description})" if s.description else s.name for s in method.stages)
    lines = [f"method {method.name}: stages {stages}", "--set KEY=VALUE keys (default):"]
    lines += [f"  {f.name} = {getattr(method.config(), f.name)!r}" for f in dataclasses.fields(method.config)]
    lines.append("--iters/--batch/--crop/--lr set iters/batch/crop/lr; --set propagate.KEY=VALUE sets stage P "
                 "of --propagate")
    return "\n".join(lines)
