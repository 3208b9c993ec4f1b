"""Finished runs' selection records: read under today's names (``read_selection``: records written before the
settings took their flags' names), and the selection rule re-applied to their scored points (``replay``, with each
point's collapse judged again against another reference: ``recollapse``). Pure of the loop.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from sfda_deploy.adapt.selection.collapse import collapse_against
from sfda_deploy.adapt.selection.rule import decide
from sfda_deploy.adapt.selection.settings import SelectionSpec

# ``metrics.json["selection"]`` before its settings took their flags' names, as benchmark v3's step files keep
# it (their format is frozen): the old key → today's. Old records said ``fallback`` for the outcome.
OLD_RECORD_NAMES = {"criterion": "select_by", "every": "select_every", "images": "select_images",
                    "margin": "fallback_margin", "fallback": "fell_back", "fallback_enabled": "fallback"}


def shipped_name(shipped: dict, reference: Optional[dict], baseline: Optional[dict]) -> str:
    """What ``replay`` shipped, in words: ``source``, ``adabn`` or the checkpoint's ``STAGE/ITER``."""
    if shipped is reference:
        return "source"
    return "adabn" if shipped is baseline else f"{shipped['stage']}/{shipped['iter']}"


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
    """The record's points with ``collapse`` judged against ``reference`` (``collapse.collapse_against`` with the
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
    """``rule.decide`` of ``spec`` over a finished run's scored points (``baseline``: its AdaBN point,
    ``matching_baseline``; used only with ``spec.baseline == "adabn"``), each point's collapse judged against
    ``spec.collapse_ref`` (``recollapse``: ValueError where the record lacks the shares that needs)."""
    base = baseline if spec.baseline == "adabn" else None
    judged = recollapse(record, baseline, spec.collapse_ref)
    points = [p for p in judged if p.get("miou") is not None]
    record = read_selection(record)
    rule = replace(spec, fallback_margin=record.get("fallback_margin", spec.fallback_margin),
                   fallback=record.get("fallback", spec.fallback))
    return decide(points, record.get("reference"), rule, base)
