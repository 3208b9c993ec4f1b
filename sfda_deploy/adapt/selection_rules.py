"""The selection rule's settings and their checks (``SelectionSpec``: flags → spec, bad flags, resume), and the rule
re-applied to a finished run's record (``replay``). Pure of the loop; the in-loop bookkeeping is ``selection.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from sfda_deploy.adapt.validation import CRITERIA, collapse_against, decide
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
        select_by: the score that picks (``validation.CRITERIA``); all are recorded.
        select_every: iterations between scoring points inside a stage; None: ``POINTS_PER_STAGE`` points per
            stage, at least ``MIN_PERIOD`` iterations apart; 0: stage ends only. Each stage end is always
            scored.
        select_images: size of the fixed target sample (seeded).
        snd_pixels: pixels subsampled (seeded, fixed) from the sample for SND (no flag).
        fallback_margin: relative margin the shipped point must beat the fallback's score by.
        fallback: ship the baseline or the source (or a point that keeps the floor) when the selection
            fails; False ships the top point by ``select_by``.
        fallback_by: the criterion the chosen point must beat the fallback on; None: ``select_by``.
        baseline: ``adabn``: the source with BatchNorm statistics re-estimated on the target is scored
            before training, is the fallback when it beats the source, and sets the floor; ``source``:
            the source alone (the rule before the AdaBN baseline).
        floor_by / floor_tolerance: criteria a checkpoint must keep within ``floor_tolerance`` of the baseline's
            to be shipped (``validation.keeps_floor``); ignored without a baseline. ``floor_by`` is parsed
            (``parse_floor``): a tuple of criteria, empty for none.
        floor_sticky: once a checkpoint falls below the floor, no later one is a candidate
            (``validation.floor_candidates``).
        seed: draws the sample and the SND pixels.
        collapse_ref: what a checkpoint's predicted-class shares are judged against to call it collapsed
            (``validation.collapse_against``: ``source``, ``adabn`` or ``agree``); without an AdaBN baseline the
            source's.
        stage_keep: ``last``: each stage hands its end to the next; ``best``: its start instead when its end
            scores lower on ``select_by`` (a stage that made the model worse is undone).
    """

    select_by: str = "im"
    select_every: Optional[int] = None
    select_images: int = 16
    snd_pixels: int = 1024
    fallback_margin: float = 0.01
    fallback: bool = True
    fallback_by: Optional[str] = "im"
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


# ``metrics.json["selection"]`` before its settings took their flags' names, as benchmark v3's step files keep
# it (their format is frozen): the old key → today's. Old records said ``fallback`` for the outcome.
OLD_RECORD_NAMES = {"criterion": "select_by", "every": "select_every", "images": "select_images",
                    "margin": "fallback_margin", "fallback": "fell_back", "fallback_enabled": "fallback"}


def read_selection(record: Optional[dict]) -> Optional[dict]:
    """A selection record under today's names: one written before the rename (it has ``criterion``, ``margin`` or
    ``fallback_enabled``) translated by ``OLD_RECORD_NAMES`` (also in ``handed_on``), a newer one as it is."""
    if not record or "select_by" in record or not {"criterion", "margin", "fallback_enabled"} & record.keys():
        return record
    out = {OLD_RECORD_NAMES.get(k, k): v for k, v in record.items()}
    if "handed_on" in out:
        out["handed_on"] = [{("select_by" if k == "criterion" else k): v for k, v in h.items()}
                            for h in out["handed_on"]]
    return out


def check_sample(available: int, split: str) -> None:
    """The target sample must hold ``MIN_IMAGES`` images."""
    if available < MIN_IMAGES:
        raise SfdaError(f"the target's {split} split has {available} image(s), too few to score checkpoints "
                        f"without labels: at least {MIN_IMAGES} are needed; add target images")


def matching_baseline(record: dict, candidate: Optional[dict], rel: float = 2e-3) -> Optional[dict]:
    """The record's own AdaBN point, else ``candidate`` (e.g. the point of an ``adabn`` run on the same target)
    when it was scored on the same sample: the two records' source scores agree within ``rel`` (the same
    sample on a GPU and on a CPU differs by up to 1e-3 on mix, a pixel share; another sample by percents).
    None otherwise."""
    if record.get("baseline"):
        return record["baseline"]
    ref = record.get("reference")
    if candidate is None or ref is None or not candidate.get("reference_scores"):
        return None
    same = all(abs(ref["scores"][c] - v) <= rel * max(abs(v), 1e-12) for c, v in candidate["reference_scores"].items())
    return candidate["point"] if same else None


def adabn_candidate(adabn_record: Optional[dict]) -> Optional[dict]:
    """What ``matching_baseline`` needs from an ``adabn`` run's selection record: its one point (as the
    baseline, stage ``adabn``) and the source scores it was compared with."""
    if not adabn_record or not adabn_record.get("points") or adabn_record.get("reference") is None:
        return None
    return {"point": {**adabn_record["points"][0], "stage": "adabn", "iter": 0},
            "reference_scores": adabn_record["reference"]["scores"]}


def replayable(record: dict, baseline: Optional[dict], reference: str) -> bool:
    """Whether ``recollapse`` can judge the record's points against ``reference``: the run recorded it (its
    verdicts stand), or the points, the source and (for ``adabn``/``agree``) the baseline kept their shares."""
    if record.get("collapse_ref", "source") == reference:
        return True
    needed = [record.get("reference")] + list(record.get("points", []))
    needed += [baseline] if reference != "source" else []
    return all(p is not None and p.get("shares") is not None for p in needed)


def recollapse(record: dict, baseline: Optional[dict], reference: str) -> list[dict]:
    """The record's points with ``collapse`` judged against ``reference`` (``validation.collapse_against`` with the
    default rule) from their recorded shares; the recorded verdicts where the run used that reference and a
    point kept no shares.

    Raises:
        ValueError: the record cannot be judged against ``reference`` (``replayable``).
    """
    if not replayable(record, baseline, reference):
        raise ValueError(f"the run did not keep the predicted-class shares a {reference!r} collapse reference needs")
    ref = record.get("reference") or {}
    source = torch.tensor(ref["shares"], dtype=torch.float64) if ref.get("shares") is not None else None
    adabn = (torch.tensor(baseline["shares"], dtype=torch.float64)
             if baseline is not None and baseline.get("shares") is not None else None)
    out = []
    for p in record.get("points", []):
        if p.get("shares") is None or source is None or (reference != "source" and adabn is None):
            out.append(dict(p))  # the run judged it against ``reference`` itself (``replayable``)
            continue
        verdict = collapse_against(reference, source, adabn, torch.tensor(p["shares"], dtype=torch.float64))
        out.append({**p, "collapse": verdict})
    return out


def replay(record: dict, spec: SelectionSpec, baseline: Optional[dict] = None) -> dict:
    """``validation.decide`` of ``spec`` over a finished run's scored points (``baseline``: its AdaBN point,
    ``matching_baseline``; used only with ``spec.baseline == "adabn"``), each point's collapse judged against
    ``spec.collapse_ref`` (``recollapse``: ValueError where the record lacks the shares that needs)."""
    base = baseline if spec.baseline == "adabn" else None
    judged = recollapse(record, baseline, spec.collapse_ref)
    points = [p for p in judged if p.get("miou") is not None]
    record = read_selection(record)
    rule = replace(spec, fallback_margin=record.get("fallback_margin", spec.fallback_margin),
                   fallback=record.get("fallback", spec.fallback))
    return decide(points, record.get("reference"), rule, base)
