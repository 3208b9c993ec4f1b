"""The selection rule's settings and their checks (``SelectionSpec``: flags → spec, bad flags, resume). Pure of the
loop; the in-loop bookkeeping is ``tracker.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sfda_deploy.adapt.selection.scores import CRITERIA
from sfda_deploy.classes import suggest
from sfda_deploy.config import SelectionSettings
from sfda_deploy.config_values import MIN_SELECT_IMAGES as MIN_IMAGES
from sfda_deploy.config_values import check_values
from sfda_deploy.errors import SfdaError


@dataclass(frozen=True)
class SelectionSpec:
    """How a run selects what it ships: ``SelectionSettings`` checked and parsed, under the same names (the flags'
    ``--select-by`` ... and the keys of ``metrics.json["selection"]``).

    Attributes:
        select_by: the score that picks (``scores.CRITERIA``); all are recorded.
        select_every: iterations between scoring points inside a stage; None: ``POINTS_PER_STAGE`` points per
            stage, at least ``MIN_PERIOD`` iterations apart; 0: stage ends only. Each stage end is always
            scored.
        select_images: size of the fixed target sample (seeded).
        snd_pixels: pixels subsampled (seeded, fixed) from the sample for SND (no flag).
        fallback_margin: relative margin the shipped point must beat the fallback's score by.
        fallback: ship the baseline or the source (or a point that keeps the floor) when the selection
            fails; False ships the top point by ``select_by``.
        fallback_by: the criterion the chosen point must beat the fallback on; None: ``select_by``. Any
            criterion may be a composite (``criteria.py``, e.g. ``im+mix``).
        fallback_to: ``better``: the fallback is AdaBN where it beats the source on ``fallback_by`` (else the
            source); ``adabn``: AdaBN wherever it was built and did not collapse.
        baseline: ``adabn``: the source with BatchNorm statistics re-estimated on the target is scored
            before training, is the fallback when it beats the source, and sets the floor; ``source``:
            the source alone (the rule before the AdaBN baseline).
        floor_by / floor_tolerance: criteria a checkpoint must keep within ``floor_tolerance`` of the baseline's
            to be shipped (``rule.keeps_floor``); ignored without a baseline. ``floor_by`` is parsed
            (``parse_floor``): a tuple of criteria, empty for none.
        floor_sticky: once a checkpoint falls below the floor, no later one is a candidate
            (``rule.floor_candidates``).
        seed: draws the sample and the SND pixels.
        collapse_ref: what a checkpoint's predicted-class shares are judged against to call it collapsed
            (``collapse.collapse_against``: ``source``, ``adabn`` or ``agree``); without an AdaBN baseline the
            source's.
        stage_keep: ``last``: each stage hands its end to the next; ``best``: its start instead when its end
            scores lower on ``select_by`` (a stage that made the model worse is undone).
    """

    select_by: str = "im+snd"
    select_every: Optional[int] = None
    select_images: int = 16
    snd_pixels: int = 1024
    fallback_margin: float = 0.01
    fallback: bool = True
    fallback_by: Optional[str] = "im+snd"
    fallback_to: str = "adabn"
    baseline: str = "adabn"
    floor_by: tuple[str, ...] = ("snd",)
    floor_tolerance: float = 0.03
    floor_sticky: bool = True
    seed: int = 0
    collapse_ref: str = "source"
    stage_keep: str = "last"


def spec_of(cfg: SelectionSettings) -> SelectionSpec:
    """The selection settings of an ``AdaptConfig`` or ``CompareConfig`` (both are ``SelectionSettings``), checked
    (``check_selection``)."""
    check_selection(cfg)
    return SelectionSpec(**{**cfg.selection_values(), "floor_by": parse_floor(cfg.floor_by)}, seed=cfg.seed)


def parse_floor(text: Optional[str]) -> tuple[str, ...]:
    """``--floor-by``: criteria separated by commas; ``none`` (or nothing): no floor."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return ()
    return tuple(c.strip() for c in str(text).split(",") if c.strip())


def check_selection(cfg: SelectionSettings) -> None:
    """Flag errors, raised before any run directory exists: each setting's type, range and choice
    (``config_values``, also for a config built in code), then what the settings mean together."""
    check_values(SelectionSettings, cfg.selection_values())
    for c in parse_floor(cfg.floor_by):
        if c not in CRITERIA:
            raise SfdaError(f"unknown --floor-by '{c}'{suggest(c, CRITERIA)}: choose from {', '.join(CRITERIA)} "
                            "(comma-separated), or none")
    if cfg.collapse_ref != "source" and cfg.baseline != "adabn":
        raise SfdaError(f"--collapse-ref {cfg.collapse_ref} judges checkpoints against the AdaBN baseline's "
                        "predictions: pass --baseline adabn, or --collapse-ref source")


def settings_of(spec: SelectionSpec) -> dict:
    """The settings a resumed run must keep: what the saved points were scored on and picked by."""
    kept = ("select_by", "select_images", "fallback", "seed", "baseline", "floor_tolerance", "floor_sticky",
            "collapse_ref", "stage_keep")
    return {k: getattr(spec, k) for k in kept} | {"floor_by": ",".join(spec.floor_by) or "none"}


def check_resume(spec: SelectionSpec, resume: dict, run: str) -> None:
    """A resumed run scores like the interrupted one (its points and best-so-far stay comparable)."""
    saved = (resume.get("selection") or {}).get("settings")
    if not saved:
        return
    older = {"baseline": "source", "floor_by": "none", "floor_tolerance": spec.floor_tolerance, "floor_sticky": False,
             "collapse_ref": "source", "stage_keep": "last"}
    saved = older | saved  # runs from before these settings
    now = settings_of(spec)
    changed = [k for k in saved if saved[k] != now.get(k)]
    if changed:
        shown = ", ".join(_flag(k, saved[k]) for k in changed)
        raise SfdaError(f"{run} selected checkpoints with {shown}: pass the same to resume it")


def _flag(key: str, value) -> str:
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{key.replace('_', '-')}"
    return f"--{key.replace('_', '-')} {value}"


def check_sample(available: int, split: str) -> None:
    """The target sample must hold ``MIN_IMAGES`` images."""
    if available < MIN_IMAGES:
        raise SfdaError(f"the target's {split} split has {available} image(s), too few to score checkpoints "
                        f"without labels: at least {MIN_IMAGES} are needed; add target images")
