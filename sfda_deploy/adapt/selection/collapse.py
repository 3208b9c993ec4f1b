"""The collapse detector: a class the reference predicts on a clear share of pixels vanishes, or one class takes
over; a collapsed checkpoint is never shipped. The reference (``collapse_against``) is the source's predicted-class
shares, AdaBN's, or where the two agree: a source that is confidently wrong about a class (it calls a large share of
the target "truck") makes a checkpoint that corrects it read as "truck vanished". Pure functions on ``[C]`` shares
(``scores.class_shares``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from sfda_deploy.config_values import CHOICES


@dataclass(frozen=True)
class CollapseRule:
    """When a model has collapsed, judged from predicted-class shares against the source's.

    Attributes:
        present: a class the source predicts on at least this share of pixels ...
        vanish: ... vanishes when the model predicts it on less than ``vanish`` × that share.
        takeover: one class takes over when the model predicts it on at least this share of pixels
            while the source predicted it on less.
    """

    present: float = 0.02
    vanish: float = 0.1
    takeover: float = 0.6


def collapse(source: torch.Tensor, model: torch.Tensor, rule: CollapseRule = CollapseRule(),
             names: Optional[Sequence[str]] = None, where: str = "at the source",
             dominant: Optional[torch.Tensor] = None, dominant_where: Optional[str] = None) -> Optional[str]:
    """Why the model collapsed (one phrase), or None.

    Args:
        source / model: ``[C]`` predicted-class shares (``class_shares``) on the same images: the reference's
            (a class it predicts on ``rule.present`` or more is present) and the model's.
        names: class names for the message (default: indices).
        where: how the message names the reference.
        dominant / dominant_where: the reference shares of the "took over" test and their name (default:
            ``source`` and ``where``).
    """
    label = (lambda c: names[c]) if names is not None else str
    dominant, dominant_where = (source, where) if dominant is None else (dominant, dominant_where or where)
    for c in range(source.numel()):
        s, m = float(source[c]), float(model[c])
        if s >= rule.present and m < rule.vanish * s:
            return f"class {label(c)} vanished ({100 * s:.1f}% of pixels {where}, {100 * m:.1f}% now)"
    c = int(model.argmax())
    if float(model[c]) >= rule.takeover and float(dominant[c]) < rule.takeover:
        return (f"class {label(c)} took over ({100 * float(dominant[c]):.1f}% of pixels {dominant_where}, "
                f"{100 * float(model[c]):.1f}% now)")
    return None


COLLAPSE_REFERENCES = CHOICES["collapse_ref"]


def collapse_against(reference: str, source: torch.Tensor, adabn: Optional[torch.Tensor], model: torch.Tensor,
                     rule: CollapseRule = CollapseRule(), names: Optional[Sequence[str]] = None) -> Optional[str]:
    """``collapse`` of ``model``'s shares judged against one of ``COLLAPSE_REFERENCES``.

    * ``source``: the source model's shares (``adabn`` unused).
    * ``adabn``: the AdaBN baseline's shares.
    * ``agree``: a class is present only where both predict it on ``rule.present`` or more (the lesser of the
      two shares), and a class takes over only if neither already predicted it on ``rule.takeover`` or more
      (the greater of the two).

    A model that predicts one class everywhere still collapses against each of them whenever the reference
    has another class present.

    Raises:
        ValueError: an unknown reference, or ``adabn`` / ``agree`` without AdaBN's shares.
    """
    if reference == "source":
        return collapse(source, model, rule, names)
    if reference not in COLLAPSE_REFERENCES:
        raise ValueError(f"unknown collapse reference {reference!r}: one of {', '.join(COLLAPSE_REFERENCES)}")
    if adabn is None:
        raise ValueError(f"the {reference!r} collapse reference needs AdaBN's predicted-class shares")
    if reference == "adabn":
        return collapse(adabn, model, rule, names, where="with AdaBN")
    return collapse(torch.minimum(source, adabn), model, rule, names, "at the source and AdaBN alike",
                    torch.maximum(source, adabn), "at the source or AdaBN")
