"""Words the commands print: counts with their plural, the one error for missing required options, and
``say``, the one channel through which the library tells the user anything (no module outside ``cli/``
calls ``print`` or ``click``; progress bars are ``sfda_deploy.progress``).

Layer 1 (imports only ``errors`` and ``assets``): every command can use it without pulling in torch.
"""
from __future__ import annotations

import sys
from typing import Callable, Mapping, Optional

from sfda_deploy.assets import BUNDLED_MODEL
from sfda_deploy.errors import SfdaError

# What a user without data (or without a source model) can run: the built-in benchmark and model.
NO_DATA_HINT = ("no data yet? 'sfda-deploy generate-data --out data/synth --size 128 256' writes one dataset "
                "per style (then --data-root data/synth/real), 'sfda-deploy demo' runs the whole flow, and "
                f"--source {BUNDLED_MODEL} is the bundled source model")


def _print(line: str, err: bool) -> None:
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


_reporter: Callable[[str, bool], None] = _print


def say(line: str = "", err: bool = False) -> None:
    """Tell the user ``line`` (stdout; stderr with ``err``): the library's one channel for results,
    notes and warnings. ``set_reporter`` sends it elsewhere (a log, a GUI, silence)."""
    _reporter(line, err)


def set_reporter(reporter: Callable[[str, bool], None]) -> Callable[[str, bool], None]:
    """Route ``say`` to ``reporter(line, err)``; returns the previous one (to restore it)."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


def plural(count: int, word: str, many: Optional[str] = None) -> str:
    """``"1 iteration"``, ``"3 iterations"``, ``"0 images"``: the count and the word it takes.

    Args:
        count: how many.
        word: the singular.
        many: the plural when it is not ``word + "s"`` (e.g. ``"indices"``).
    """
    return f"{count} {word if count == 1 else (many or word + 's')}"


def missing_options(values: Mapping[str, object]) -> list[str]:
    """The flags among ``{flag: value}`` whose value is missing (None or empty), in the given order."""
    return [flag for flag, value in values.items() if value is None or value == ""]


def require_options(command: str, values: Mapping[str, object], example: str, hint: str = NO_DATA_HINT) -> None:
    """Raise one ``SfdaError`` naming every missing required option at once (nothing when all are given).

    Args:
        command: the command's name, for the message.
        values: ``{"--flag": value}`` of the required options.
        example: a complete command line to copy.
        hint: what a user without those inputs can use instead.
    """
    missing = missing_options(values)
    if not missing:
        return
    names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
    raise SfdaError(f"{command} needs {names}: e.g. {example}; {hint}")
