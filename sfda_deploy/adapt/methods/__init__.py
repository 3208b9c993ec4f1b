"""Recipes: name → ``Method`` (config dataclass + stages). See ``sfda_deploy/adapt/loop.py``.

A new recipe is one module ``methods/<name>.py`` defining ``<Name>Config`` and ``METHOD``, plus its
module in the tuple below (or ``register(METHOD)`` from outside the package).
"""
from __future__ import annotations

from sfda_deploy.adapt.methods import adabn, atp, cpsl, distill, hiast, ldbe, prsfda, supervised
from sfda_deploy.adapt.methods.base import Method
from sfda_deploy.classes import suggest
from sfda_deploy.errors import SfdaError

# name → ``Method`` (the recipe object itself, as ``models.MODELS`` holds builders)
METHODS: dict[str, Method] = {m.METHOD.name: m.METHOD
                              for m in (supervised, adabn, atp, ldbe, prsfda, hiast, cpsl, distill)}


def register(method: Method) -> None:
    """Add (or replace) a recipe under ``method.name``: ``--method NAME`` runs it."""
    METHODS[method.name] = method


def get_method(name: str) -> Method:
    """The registered ``Method``; unknown names get the closest valid one."""
    if name not in METHODS:
        valid = sorted(m for m in METHODS if m != "supervised")
        raise SfdaError(f"unknown method '{name}'{suggest(name, valid)}: choose one of {', '.join(valid)}")
    return METHODS[name]


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
