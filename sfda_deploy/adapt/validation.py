"""Label-free validation: scores of a model on unlabelled target images, the collapse detector and the
selection rule (pure functions on tensors and plain records; the in-loop bookkeeping is ``selection.py``).

Every score is "higher is better":

* ``im_score``: information maximisation, H(mean prediction) − mean H(prediction): confident and
  diverse predictions score high; a model that predicts one class everywhere scores 0.
* ``snd_score``: soft neighbourhood density (Saito et al., ICCV 2021): the entropy of each sample's
  similarity distribution over its neighbours; well-clustered, not over-dispersed features score high.
* ``mix_score``: a MixVal-style probe (Hu et al., NeurIPS 2023), pixel-wise: the model sees
  ``λ·a + (1 − λ)·b`` (λ > 0.5) and should predict what it predicts on the dominant image ``a``; counted
  on the pixels where its predictions on ``a`` and ``b`` differ (MixVal's inter-cluster probe: the
  pixels that test the decision boundary).

Not a criterion but recorded beside them: ``marginal_kl`` (how far the class marginal drifted from the
source model's: always smallest at the source, so it cannot pick an adapted model) and the collapse
detector ``collapse`` (a class the reference predicts on a clear share of pixels vanishes, or one class
takes over), which bars a point from being shipped. The reference (``collapse_against``) is the source's
predicted-class shares, AdaBN's, or where the two agree: a source that is confidently wrong about a class
(it calls a large share of the target "truck") makes a checkpoint that corrects it read as "truck vanished".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from sfda_deploy.config_values import CHOICES, SELECTION_CRITERIA

CRITERIA = SELECTION_CRITERIA
MIX_LAMBDA = 0.55  # MixVal's inter-cluster mix: the dominant image barely dominates


def _entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (natural log, 0·log 0 = 0) along ``dim``."""
    return -torch.special.xlogy(p, p).sum(dim)


def _pixel_probs(logits: torch.Tensor) -> torch.Tensor:
    """``[B,C,H,W]`` logits → ``[B·H·W, C]`` float64 softmax probabilities."""
    c = logits.shape[1]
    return torch.softmax(logits.double(), dim=1).permute(0, 2, 3, 1).reshape(-1, c)


def im_score(logits: torch.Tensor) -> float:
    """Information maximisation: H(mean of p over all pixels) − mean over pixels of H(p).

    Args:
        logits: ``[B,C,H,W]``; p = softmax over C.
    Returns:
        the score in nats, in ``[0, ln C]``; higher is better.
    """
    p = _pixel_probs(logits)
    return float(_entropy(p.mean(0)) - _entropy(p).mean())


def snd_score(features: torch.Tensor, temperature: float = 0.05) -> float:
    """Soft neighbourhood density of ``N`` samples.

    Rows are L2-normalised; S = F·Fᵀ / temperature; each row's softmax is taken over the other N − 1
    entries (the diagonal left out).

    Args:
        features: ``[N,D]``, N ≥ 2 (e.g. per-pixel class probabilities of a pixel subsample).
        temperature: the similarity temperature (the paper's 0.05).
    Returns:
        the mean over rows of that softmax's entropy (nats); higher is better.
    """
    if features.shape[0] < 2:
        raise ValueError(f"snd_score needs at least 2 samples, got {features.shape[0]}")
    f = torch.nn.functional.normalize(features.double(), dim=1)
    sim = f @ f.T / temperature
    sim.fill_diagonal_(float("-inf"))
    return float(_entropy(torch.softmax(sim, dim=1)).mean())


def mix_score(pred_mix: torch.Tensor, pred_a: torch.Tensor, pred_b: torch.Tensor) -> float:
    """Agreement of the prediction on a mixed image with the prediction on its dominant image.

    Args:
        pred_mix / pred_a / pred_b: class indices of the same shape (e.g. ``[B,H,W]``) on the mix
            ``λ·a + (1 − λ)·b`` and on ``a`` and ``b`` alone.
    Returns:
        the share of pixels with ``pred_a ≠ pred_b`` where ``pred_mix == pred_a``; 0.0 when the
        model predicts the same on ``a`` and ``b`` everywhere (nothing it tells apart). Higher is better.
    """
    differ = pred_a != pred_b
    n = int(differ.sum())
    if n == 0:
        return 0.0
    return float((pred_mix[differ] == pred_a[differ]).sum()) / n


def class_marginal(logits: torch.Tensor) -> torch.Tensor:
    """``[C]`` float64 mean softmax probability over all pixels of ``[B,C,H,W]`` logits."""
    return _pixel_probs(logits).mean(0)


def class_shares(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C]`` float64 share of the pixels of ``pred`` (class indices, any shape) predicted as each class."""
    counts = torch.bincount(pred.reshape(-1).long(), minlength=num_classes)[:num_classes].double()
    return counts / max(int(pred.numel()), 1)


def marginal_kl(marginal: torch.Tensor, reference: torch.Tensor, eps: float = 1e-12) -> float:
    """KL(marginal ‖ reference) in nats, both ``[C]`` distributions (``eps`` keeps log finite)."""
    m, r = marginal.double(), reference.double()
    return float((torch.special.xlogy(m, m) - m * torch.log(r + eps)).sum())


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


# ---- the selection rule --------------------------------------------------------------------------
def beats(score: float, reference: float, margin: float) -> bool:
    """``score`` exceeds ``reference`` by more than ``margin`` × |reference| (a relative margin)."""
    return score > reference + margin * abs(reference)


def best_point(points: Sequence[dict], criterion: str, skip_collapsed: bool = True) -> Optional[dict]:
    """The point with the highest ``scores[criterion]`` (the earliest on ties), collapsed ones skipped
    when ``skip_collapsed``; None if none is left. A point: ``{"stage", "iter", "scores", "collapse"}``."""
    best = None
    for p in points:
        if skip_collapsed and p.get("collapse"):
            continue
        if best is None or p["scores"][criterion] > best["scores"][criterion]:
            best = p
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
        rule: the selection settings (``selection_rules.SelectionSpec``, the flags' names); ``decide`` reads:
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
        baseline: the training-free baseline's point (stage ``adabn``: the source with BatchNorm statistics
            re-estimated on the target), or None. It is the fallback when it beats the reference on
            ``fallback_by`` by ``fallback_margin`` and did not collapse; otherwise the reference is.
    Returns:
        ``{"selected": top point by ``select_by`` or None, "shipped": the point shipped (the baseline or
        the reference on fallback), "fell_back": bool, "reason": str or None}``.
    """
    criterion, margin = rule.select_by, rule.fallback_margin
    floor, tolerance, sticky = rule.floor_by, rule.floor_tolerance, rule.floor_sticky
    fallback, guard = rule.fallback, rule.fallback_by
    top = best_point(points, criterion, skip_collapsed=False)
    if not fallback or reference is None:
        return {"selected": top, "shipped": top if top is not None else reference, "fell_back": False,
                "reason": None}
    judge = guard or criterion
    home = reference
    if (baseline is not None and not baseline.get("collapse")
            and beats(baseline["scores"][judge], reference["scores"][judge], margin)):
        home = baseline
    kept = floor_candidates(points, baseline, floor, tolerance, sticky)
    ok = best_point(kept, criterion)
    ref = home["scores"][judge]

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
    if not beats(ok["scores"][judge], ref, margin):
        picked = "" if judge == criterion else f" (picked by {criterion})"
        reason = (f"the {judge} score {ok['scores'][judge]:.4f} of the best checkpoint{picked} ({ok['stage']} "
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
