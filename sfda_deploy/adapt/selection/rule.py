"""The selection rule: what a run ships from its scored points (``decide``), the AdaBN floor and the margin a point
must beat the fallback by. Pure functions on plain point records (``{"stage", "iter", "scores", "collapse"}``); the
in-loop bookkeeping is ``tracker.py``, the rule re-applied to a finished run's record ``records.py``.
"""
from __future__ import annotations

from typing import Optional, Sequence

from sfda_deploy.adapt.selection.criteria import anchor_of, is_composite, value


def beats(score: float, reference: float, margin: float, criterion: str = "im") -> bool:
    """``score`` exceeds ``reference`` by more than ``margin`` × |reference| (a relative margin); for a composite
    ``criterion`` (``criteria.py``: already a mean relative gain, 0 at its anchor) by more than ``margin``."""
    return score > reference + (margin if is_composite(criterion) else margin * abs(reference))


def best_point(points: Sequence[dict], criterion: str, skip_collapsed: bool = True,
               anchor: Optional[dict] = None) -> Optional[dict]:
    """The point with the highest score on ``criterion`` (``criteria.value``; ``anchor``: a composite's) (the
    earliest on ties), collapsed ones skipped when ``skip_collapsed``; None if none is left. A point:
    ``{"stage", "iter", "scores", "collapse"}``."""
    best, best_score = None, None
    for p in points:
        if skip_collapsed and p.get("collapse"):
            continue
        score = value(p, criterion, anchor)
        if best is None or score > best_score:
            best, best_score = p, score
    return best


def keeps_floor(point: dict, baseline: Optional[dict], floor: Sequence[str], tolerance: float) -> bool:
    """``point`` scores at least ``baseline``'s score − ``tolerance`` × |that score| on every criterion in
    ``floor`` (True without a baseline: a floor is only measured against a model on the same footing)."""
    if baseline is None:
        return True
    return all(point["scores"][c] >= baseline["scores"][c] - tolerance * abs(baseline["scores"][c]) for c in floor)


def floor_candidates(points: Sequence[dict], baseline: Optional[dict], floor: Sequence[str], tolerance: float,
                     sticky: bool = True) -> list[dict]:
    """The points that keep the floor (``keeps_floor``), in order. ``sticky``: once a point falls below it, no
    later point is a candidate (a stage after the breach starts from the degraded model, and a later rise of
    SND, e.g. from ATP's propagation stage, did not bring its predictions back: docs/benchmark.md)."""
    kept = []
    for p in points:
        if keeps_floor(p, baseline, floor, tolerance):
            kept.append(p)
        elif sticky:
            break
    return kept


def _name(point: dict) -> str:
    if point["stage"] == "source":
        return "source's"
    return "AdaBN baseline's" if point["stage"] == "adabn" else f"stage {point['stage']}'s"


def decide(points: Sequence[dict], reference: Optional[dict], rule, baseline: Optional[dict] = None) -> dict:
    """What the run ships: the best scored point, or a fallback (the baseline or the source).

    Args:
        points: the scored checkpoints, in training order.
        reference: the source model's point (same record), or None when there is none to fall back to.
        rule: the selection settings (``settings.SelectionSpec``, the flags' names); ``decide`` reads:
            select_by: one of ``CRITERIA``.
            fallback_margin: relative margin the shipped point must beat the fallback's score by.
            fallback: False ships the top point by ``select_by`` whatever it is (``--no-fallback``).
            fallback_by: the criterion the chosen point must beat the fallback on; None: ``select_by``.
                A criterion can rank one run's checkpoints well and still not compare the source with an
                adapted model (SND scores the source's less confident features higher than any adapted model's).
            floor_by / floor_tolerance / floor_sticky: a checkpoint is a candidate only if it keeps every criterion
                of ``floor_by`` within ``floor_tolerance`` (relative) of the baseline's, and with ``floor_sticky``
                every earlier point did too
                (``floor_candidates``; no floor without a baseline).
                IM rewards what entropy-minimising stages do whether or not it helps; SND falls when
                training over-sharpens the features (docs/benchmark.md, "Label-free selection").
            fallback_to: ``better``: the baseline is the fallback when it beats the reference on ``fallback_by``
                by ``fallback_margin``; ``adabn``: whenever it exists. Either way, the reference where the
                baseline collapsed or is absent.
            A composite criterion (``criteria.py``, e.g. ``im+mix``) is measured against ``criteria.anchor_of``:
            the baseline's point, or the reference's without one.
        baseline: the training-free baseline's point (stage ``adabn``: the source with BatchNorm statistics
            re-estimated on the target), or None.
    Returns:
        ``{"selected": top point by ``select_by`` or None, "shipped": the point shipped (the baseline or
        the reference on fallback), "fell_back": bool, "reason": str or None}``.
    """
    criterion, margin = rule.select_by, rule.fallback_margin
    floor, tolerance, sticky = rule.floor_by, rule.floor_tolerance, rule.floor_sticky
    fallback, guard = rule.fallback, rule.fallback_by
    anchor = anchor_of(baseline, reference, points)
    top = best_point(points, criterion, skip_collapsed=False, anchor=anchor)
    if not fallback or reference is None:
        return {"selected": top, "shipped": top if top is not None else reference, "fell_back": False,
                "reason": None}
    judge = guard or criterion

    def score(p: dict) -> float:
        return value(p, judge, anchor)

    home = reference
    if baseline is not None and not baseline.get("collapse") and (
            rule.fallback_to == "adabn" or beats(score(baseline), score(reference), margin, judge)):
        home = baseline
    kept = floor_candidates(points, baseline, floor, tolerance, sticky)
    ok = best_point(kept, criterion, anchor=anchor)
    ref = score(home)

    if ok is None:
        if top is None:
            reason = "no checkpoint was scored"
        elif not kept:
            reason = (f"the first scored checkpoint already fell more than {100 * tolerance:g}% below the AdaBN "
                      f"baseline's {'/'.join(floor)}" if sticky else f"every scored checkpoint fell more than "
                      f"{100 * tolerance:g}% below the AdaBN baseline's {'/'.join(floor)}")
        elif baseline is not None and floor:
            reason = f"every checkpoint that kept the floor collapsed ({top['collapse']})"
        else:
            reason = f"every scored checkpoint collapsed ({top['collapse']})"
        return {"selected": top, "shipped": home, "fell_back": True, "reason": reason}
    if not beats(score(ok), ref, margin, judge):
        picked = "" if judge == criterion else f" (picked by {criterion})"
        reason = (f"the {judge} score {score(ok):.4f} of the best checkpoint{picked} ({ok['stage']} "
                  f"iteration {ok['iter']}) does not beat the {_name(home)} {ref:.4f} by {100 * margin:g}%")
        return {"selected": top, "shipped": home, "fell_back": True, "reason": reason}
    if ok is not top:
        why = (f"collapsed: {top['collapse']}" if top.get("collapse") else
               f"fell more than {100 * tolerance:g}% below the AdaBN baseline's {'/'.join(floor)}"
               + (", or came after a checkpoint that did" if sticky else ""))
        reason = (f"the top-scored checkpoint ({top['stage']} iteration {top['iter']}) {why}; shipped the best "
                  f"one that did not")
        return {"selected": top, "shipped": ok, "fell_back": True, "reason": reason}
    return {"selected": top, "shipped": top, "fell_back": False, "reason": None}
