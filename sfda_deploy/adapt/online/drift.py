"""The safety net's detector: is the adapted model drifting away from the anchor or collapsing?

Four signals, each computed on the frames of one update from the adapted model's logits and the anchor
model's (the weights adaptation started from), all pure:

- ``entropy_rise``: mean normalised entropy of the adapted model minus the anchor's (rising
  uncertainty: the adapted model got worse than where it started);
- ``class_ratio``: effective number of predicted classes (``exp`` of the entropy of the hard-prediction
  marginal) of the adapted model over the anchor's (a collapse onto few classes drives it to 0);
- ``marginal_shift``: total-variation distance between the two soft class marginals (the class mix
  moved far from the anchor's);
- ``disagreement``: share of pixels whose argmax differs from the anchor's.

``drift_reason`` names the first signal beyond its bound (``None``: no reset). The bounds are loose on
purpose: adaptation *should* change the predictions where the anchor is wrong; the net only catches
changes no domain shift explains.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from sfda_deploy.adapt.losses import normalized_entropy


@dataclass(frozen=True)
class DriftConfig:
    """Bounds beyond which the adapted model is reset to the anchor.

    Attributes:
        max_entropy_rise: largest allowed rise of the mean normalised entropy over the anchor's.
        min_class_ratio: smallest allowed ratio of effective predicted classes (adapted / anchor).
        max_marginal_shift: largest allowed total variation between the soft class marginals.
        max_disagreement: largest allowed share of pixels predicted differently from the anchor.
    """

    max_entropy_rise: float = 0.2
    min_class_ratio: float = 0.5
    max_marginal_shift: float = 0.35
    max_disagreement: float = 0.6


def effective_classes(labels: Tensor, num_classes: int) -> Tensor:
    """``exp(H(m))`` of the hard-prediction marginal ``m`` (labels ``[B,H,W]``): 1 for a single class,
    ``num_classes`` for a uniform mix."""
    m = torch.bincount(labels.flatten(), minlength=num_classes).double()
    m = m / m.sum()
    return torch.exp(-(m[m > 0] * m[m > 0].log()).sum())


def drift_scores(logits: Tensor, anchor_logits: Tensor) -> dict[str, float]:
    """The four signals (see the module doc) of ``[B,C,H,W]`` logits against the anchor's."""
    c = logits.shape[1]
    logits, anchor_logits = logits.detach().float(), anchor_logits.detach().float()
    pred, anchor_pred = logits.argmax(1), anchor_logits.argmax(1)
    m = logits.softmax(1).mean((0, 2, 3))
    m0 = anchor_logits.softmax(1).mean((0, 2, 3))
    return {
        "entropy_rise": float(normalized_entropy(logits).mean() - normalized_entropy(anchor_logits).mean()),
        "class_ratio": float(effective_classes(pred, c) / effective_classes(anchor_pred, c)),
        "marginal_shift": float(0.5 * (m - m0).abs().sum()),
        "disagreement": float((pred != anchor_pred).float().mean()),
    }


def drift_reason(scores: dict[str, float], cfg: DriftConfig) -> Optional[str]:
    """Why to reset (``"disagreement 0.71 > 0.60"``), or ``None`` when every signal is within bounds."""
    checks = (("entropy_rise", scores["entropy_rise"] > cfg.max_entropy_rise, ">", cfg.max_entropy_rise),
              ("class_ratio", scores["class_ratio"] < cfg.min_class_ratio, "<", cfg.min_class_ratio),
              ("marginal_shift", scores["marginal_shift"] > cfg.max_marginal_shift, ">", cfg.max_marginal_shift),
              ("disagreement", scores["disagreement"] > cfg.max_disagreement, ">", cfg.max_disagreement))
    for name, beyond, op, bound in checks:
        if beyond:
            return f"{name.replace('_', ' ')} {scores[name]:.2f} {op} {bound:.2f}"
    return None
