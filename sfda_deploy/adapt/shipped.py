"""What an adapt run shipped, in words: one vocabulary for the console, the plots, the demo and compare.

A run ships one of (``metrics.json["selection"]["shipped"]``): a checkpoint of its own training (the one
its label-free criterion ranked first, or the next one when the first was rejected: collapsed or below the
AdaBN floor), or, on **fallback**, the AdaBN baseline or the source. "(fallback)" means only that: the
run's own training did not ship.
"""
from __future__ import annotations

from typing import Optional

FALLBACK = "fallback"


def shipped_kind(selection: Optional[dict]) -> str:
    """``checkpoint`` (the top-ranked one), ``runner-up`` (a lower-ranked checkpoint: the top one was
    rejected), ``adabn`` or ``source`` (fallback), or ``last`` (a run without selection: its last iterate)."""
    shipped = (selection or {}).get("shipped") or {}
    if not shipped:
        return "last"
    if shipped.get("baseline"):
        return "adabn"
    if shipped.get("reference"):
        return "source"
    return "runner-up" if selection.get("fell_back") else "checkpoint"


def shipped_label(selection: Optional[dict]) -> str:
    """The short form of a table cell: ``T/200``, ``T/150 (top rejected)``, ``AdaBN (fallback)``,
    ``source (fallback)`` (a black-box source: the stage it falls back to) or ``last``."""
    kind = shipped_kind(selection)
    shipped = (selection or {}).get("shipped") or {}
    if kind == "adabn":
        return f"AdaBN ({FALLBACK})"
    if kind == "source":
        return f"{'source' if shipped['stage'] == 'source' else shipped['stage']} ({FALLBACK})"
    if kind == "last":
        return "last"
    return f"{shipped['stage']}/{shipped['iter']}" + (" (top rejected)" if kind == "runner-up" else "")


def shipped_words(selection: Optional[dict]) -> str:
    """What shipped, for a title: ``checkpoint T/200``, ``checkpoint T/150 (the top-ranked was rejected)``,
    ``the AdaBN baseline (fallback: no checkpoint beat it)``, ``the source (fallback: …)`` or ``the last
    iterate``."""
    kind, label = shipped_kind(selection), shipped_label(selection)
    if kind == "adabn":
        return f"the AdaBN baseline ({FALLBACK}: no checkpoint of the run beat it)"
    if kind == "source":
        return f"the {label.removesuffix(f' ({FALLBACK})')} ({FALLBACK}: no checkpoint of the run beat it)"
    if kind == "runner-up":
        return f"checkpoint {label.removesuffix(' (top rejected)')} (the top-ranked one was rejected)"
    return "the last iterate" if kind == "last" else f"checkpoint {label}"


def is_fallback(selection: Optional[dict]) -> bool:
    """True when the run's own training did not ship (the AdaBN baseline or the source did)."""
    return shipped_kind(selection) in ("adabn", "source")


def _score(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def progression(method: str, source_miou: Optional[float], adabn_miou: Optional[float],
                shipped_miou: Optional[float], selection: Optional[dict]) -> str:
    """``source-only 34.1 → AdaBN 52.1 → ATP 52.9 (T/200, +0.8 over AdaBN)``, or on fallback ``… → ATP: AdaBN
    shipped, 52.1 (fallback: <reason>)``: every step of what was tried, and what shipped."""
    steps = [f"source-only {_score(source_miou)}"]
    if adabn_miou is not None:
        steps.append(f"AdaBN {_score(adabn_miou)}")
    kind, label = shipped_kind(selection), shipped_label(selection)
    reason = (selection or {}).get("reason")
    if kind in ("adabn", "source"):
        what = "AdaBN" if kind == "adabn" else label.removesuffix(f" ({FALLBACK})")
        steps.append(f"{method}: {what} shipped, {_score(shipped_miou)} ({FALLBACK}: {reason})")
    else:
        gain = (f", {shipped_miou - adabn_miou:+.1f} over AdaBN" if None not in (shipped_miou, adabn_miou)
                else f", {shipped_miou - source_miou:+.1f} over the source" if None not in (shipped_miou, source_miou)
                else "")
        why = f"; {reason}" if kind == "runner-up" and reason else ""
        steps.append(f"{method} {_score(shipped_miou)} (shipped {label}{gain}{why})")
    return " → ".join(steps)


def run_progression(method: str, metrics: dict) -> Optional[str]:
    """``progression`` from an adapt run's ``metrics.json`` (None without an evaluation)."""
    selection = metrics.get("selection")
    stages = [k for k in metrics if k not in ("before", "selection") and "eval" in metrics[k]]
    shipped = ((selection or {}).get("shipped") or {}).get("eval") or (metrics[stages[-1]]["eval"] if stages else None)
    if shipped is None:
        return None
    baseline = (selection or {}).get("baseline") or {}
    return progression(method, (metrics.get("before") or {}).get("miou"), baseline.get("miou"), shipped["miou"],
                       selection)


def point_rejections(record: dict) -> list[Optional[str]]:
    """Why the selection rule could not ship each scored point of ``metrics.json["selection"]`` (None: a
    candidate), read with the rule's own tests (``rule.keeps_floor``, its ``collapse`` field): ``collapse``,
    ``below floor`` (its floor criteria fell more than the tolerance below AdaBN's) or ``after a floor breach``
    (``--floor-sticky``: an earlier point fell below). Display only: the decision is ``rule.decide``'s."""
    from sfda_deploy.adapt.selection.rule import keeps_floor

    if not record.get("fallback", True):
        return [None] * len(record["points"])  # --no-fallback ships the top point whatever it is
    floor, baseline = record.get("floor_by") or [], record.get("baseline")
    out, breached = [], False
    for p in record["points"]:
        kept = keeps_floor(p, baseline, floor, record.get("floor_tolerance", 0.0))
        if not kept:
            out.append("below floor")
            breached = True
        elif breached and record.get("floor_sticky", True):
            out.append("after a floor breach")
        else:
            out.append("collapse" if p.get("collapse") else None)
    return out
