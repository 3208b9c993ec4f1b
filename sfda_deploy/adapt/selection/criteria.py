"""What a rule ranks and judges by: one recorded score (``scores.CRITERIA``: ``im``, ``snd``, ``mix``) or a
composite of them (``im+mix``): the mean, over its parts, of the point's relative gain over an anchor's score,

    composite(point) = (1/k) Σ_c (point.c − anchor.c) / |anchor.c|   (k parts),

the anchor being the AdaBN baseline's point (the source's where a run has no baseline, the run's first scored
point where it has neither: ``anchor_of``). Each part is put on the
same footing (a share of the anchor's score), so neither dominates by its units: IM falls where ATP's
propagation stage raises the entropy while the mix probe rises, and the composite weighs the two (docs/benchmark.md,
"Selection on benchmark v3"). The anchor scores 0; a composite compares two points by how much more each gains.
It is a function of one point and the anchor, so the loop can keep its best checkpoint as points arrive (the
anchor is scored before training). Pure functions on plain point records.
"""
from __future__ import annotations

from typing import Optional, Sequence

JOIN = "+"


def parts(criterion: str) -> tuple[str, ...]:
    """The recorded scores ``criterion`` is made of: ``("im",)`` for ``im``, ``("im", "mix")`` for ``im+mix``."""
    return tuple(c.strip() for c in criterion.split(JOIN))


def is_composite(criterion: str) -> bool:
    return len(parts(criterion)) > 1


def value(point: dict, criterion: str, anchor: Optional[dict]) -> float:
    """``point``'s score on ``criterion``: the recorded one, or a composite's mean relative gain over
    ``anchor`` (``{"scores": ...}``; ignored for a single score).

    Raises:
        ValueError: a composite without an anchor, or an anchor scoring 0 on a part (no relative gain).
    """
    if not is_composite(criterion):
        return point["scores"][criterion]
    if anchor is None:
        raise ValueError(f"the composite criterion {criterion!r} needs an anchor point to measure gains against")
    total = 0.0
    for c in parts(criterion):
        ref = anchor["scores"][c]
        if ref == 0:
            raise ValueError(f"the anchor scores 0 on {c}: no relative gain over it")
        total += (point["scores"][c] - ref) / abs(ref)
    return total / len(parts(criterion))



def anchor_of(baseline: Optional[dict], reference: Optional[dict], points: Sequence[dict]) -> Optional[dict]:
    """What a composite is measured against: the baseline's point, else the reference's, else the first scored
    point (a run with nothing to fall back to still ranks its points by a fixed anchor); None without any."""
    return baseline or reference or (points[0] if points else None)
