"""The one path from flags, a ``--config`` YAML file and ``--resume RUN`` to a command's config dataclass
(``sfda_deploy.config``): defaults < YAML < flags, every value checked (``config_values``), and a resumed
run's own settings (its ``config.yaml``) enforced.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sfda_deploy.classes import suggest
from sfda_deploy.config_values import _show, check_values, option_label
from sfda_deploy.errors import SfdaError
from sfda_deploy.runs import write_yaml

T = TypeVar("T")


# ------------------------------------------------------------------------------------------
# Merging: defaults < YAML < flags.
# ------------------------------------------------------------------------------------------
def default_of(cls: type, name: str) -> Any:
    """The dataclass default of one field (for Click's ``default=``/``show_default``)."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SfdaError(f"config file {path} does not exist: check the --config path")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SfdaError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}): fix its syntax") from None
    if not isinstance(data, dict):
        raise SfdaError(f"config file {path} must be a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _coerce(cls: type, name: str, value: Any) -> Any:
    """YAML lists → tuples for tuple-typed fields (frozen dataclasses stay hashable and comparable)."""
    if isinstance(value, list) and "tuple" in str({f.name: f.type for f in dataclasses.fields(cls)}[name]):
        return tuple(value)
    return value


def build_config(cls: type[T], yaml_values: dict[str, Any], flag_values: dict[str, Any]) -> T:
    """Merge into a ``cls`` instance, every value checked (``check_values``); unknown YAML keys get one
    line naming the valid ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in yaml_values:
        if key not in names:
            raise SfdaError(f"unknown option '{key}' in the config file{suggest(key, names)}: "
                            f"valid options are {', '.join(names)}")
    from_yaml = check_values(cls, {k: _coerce(cls, k, v) for k, v in yaml_values.items()})
    merged = {**from_yaml, **flag_values}
    for k, v in flag_values.items():  # mappings (--set, --arch-kw) add to the file's, key by key
        if isinstance(v, dict) and isinstance(from_yaml.get(k), dict):
            merged[k] = {**from_yaml[k], **v}
    if merged.get("resume"):
        merged = resumed_values(cls, str(merged["resume"]), merged)
    return cls(**check_values(cls, merged))


# ------------------------------------------------------------------------------------------
# --resume RUN: the run's own settings (its config.yaml); a differing option is refused, except the
# few that do not change what is computed.
# ------------------------------------------------------------------------------------------
MUTABLE_ON_RESUME = ("resume", "workers", "device", "eval_every")


def command_of(cls: type) -> str:
    """``AdaptConfig`` → ``adapt``: the command (and runs/ folder) a config class belongs to."""
    return cls.__name__.removesuffix("Config").lower()


def read_run_config(cls: type, run_dir: str | Path) -> dict[str, Any]:
    """The options a run of ``cls``'s command was started with (its ``config.yaml``)."""
    path, command = Path(run_dir) / "config.yaml", command_of(cls)
    if not path.is_file():
        raise SfdaError(f"{run_dir} is not a resumable {command} run (no config.yaml): pass a runs/{command}/<name> "
                        f"directory written by sfda-deploy {command}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SfdaError(f"{path} is unreadable ({type(e).__name__}): start a new run instead") from None
    if not isinstance(data, dict):
        raise SfdaError(f"{path} is not a mapping of option: value: start a new run instead")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: _coerce(cls, k, v) for k, v in data.items() if k in names and k != "resume"}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, str) and isinstance(b, str) and a != b and os.sep in a + b:
        return Path(a).resolve() == Path(b).resolve()  # the same file spelt two ways
    return a == b


def resumed_values(cls: type, run_dir: str, given: dict[str, Any]) -> dict[str, Any]:
    """The saved options of ``run_dir`` with ``given`` (flags, YAML, --set) checked against them.

    Raises:
        SfdaError: an option given with ``--resume`` differs from the run's, naming both values.
    """
    saved = read_run_config(cls, run_dir)
    pairs = []  # (label, given, saved): mappings (--set options) compared key by key
    for name, value in given.items():
        if name in MUTABLE_ON_RESUME or name not in saved:
            continue
        if isinstance(value, dict) and isinstance(saved[name], dict):
            pairs += [(f"{'--set' if name == 'options' else option_label(name)} {k}", v, saved[name].get(k, "unset"))
                      for k, v in value.items()]
        else:
            pairs.append((option_label(name), value, saved[name]))
    for what, value, was in pairs:
        if not _same(value, was):
            raise SfdaError(f"{what} {_show(value)} differs from {_show(was)}, which {run_dir} was started with: "
                            f"drop {what} to resume the run as it was (its config.yaml), or start a new run")
    return {**saved, **{k: v for k, v in given.items() if k in MUTABLE_ON_RESUME}}


def resume_changes(cls: type, cfg: Any) -> dict[str, tuple[Any, Any]]:
    """``{option: (saved, now)}`` of the options a resumed run changed (``MUTABLE_ON_RESUME``)."""
    saved = read_run_config(cls, cfg.resume)
    return {k: (saved[k], getattr(cfg, k)) for k in MUTABLE_ON_RESUME
            if k in saved and not _same(saved[k], getattr(cfg, k))}


def save_config(run_dir: Path, cfg: Any, exclude: tuple[str, ...] = (), **extra: Any) -> Path:
    """``run_dir/config.yaml``: every option of ``cfg`` (a command's config dataclass) as it ran, plus
    ``extra`` (``adapt``: the method's config and each borrowed stage's); the same for every command,
    and what ``--resume`` reads back (``read_run_config``)."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in exclude}
    return write_yaml(Path(run_dir) / "config.yaml", {**values, **extra})
