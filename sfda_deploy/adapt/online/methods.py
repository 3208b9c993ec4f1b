"""The online update rules: per method a frozen config (defaults in one block) and a step function.

``step(x, state, cfg, anchor_logits) -> {loss name: scalar tensor}``: the session sums them and takes one
optimizer step.
``after_step(state, cfg)``: what follows the optimizer step (CoTTA: EMA teacher, stochastic restore).

- ``tent``: BatchNorm affine parameters (and running statistics) by entropy minimisation; on a model with
  LayerNorm (SegFormer, DAFormer) the LayerNorm affine parameters too, as TTA does for transformers.
- ``cotta``: every weight of a student, trained to the weight-averaged (EMA) teacher's pseudo labels,
  view-averaged when the anchor is unsure; the teacher predicts; stochastic restore to the source.
- ``bnstats``: the training-free baseline (online AdaBN): only the BatchNorm running statistics follow
  the stream (a train-mode forward per update), no gradient. Every method above also moves them, so
  a method's own value is its gain over this row.
- ``anchored`` (ours): TENT's parameters, but only the reliable pixels' entropy (normalised entropy
  below ``max_entropy``) and an L2 pull to the anchor's values. Why: on a long drive TENT's failure
  modes are error accumulation through unsure pixels (their entropy gradient pushes wrong classes
  as hard as right ones) and slow drift away from the source (forgetting); the filter removes the
  first, the pull bounds the second, and the session's reset catches whatever slips past both.
  BatchNorm-only keeps an update cheap (fps) and the reachable models close to the source's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from sfda_deploy.adapt.batchnorm import train_norm
from sfda_deploy.adapt.online.rules import (
    anchor_penalty,
    cotta_targets,
    reliable_entropy_loss,
    soft_cross_entropy,
    stochastic_restore_,
    tent_loss,
    view_averaged_probs,
)
from sfda_deploy.adapt.teacher import ema_update
from sfda_deploy.classes import suggest
from sfda_deploy.config_values import build_options
from sfda_deploy.errors import SfdaError


@dataclass(frozen=True)
class TentConfig:
    """Attributes: lr (Adam), bn_momentum (running statistics' update per step), batch (frames per update:
    the most recent ones).

    ``bn_momentum`` 0.01 (was 0.1): on a development drive (seed 1, not the reported one) 0.1 gained the source
    model +13.1 mIoU but cost an offline-adapted model 3.7 in fog; 0.03: +10.4 and −1.6; 0.01: +5.2 and −0.5, the
    only setting that kept every condition within 0.5 of no adaptation (docs/benchmark.md). A source model
    gains more with ``--adapt-set bn_momentum=0.1``."""

    lr: float = 1e-4
    bn_momentum: float = 0.01
    batch: int = 1


@dataclass(frozen=True)
class AnchoredConfig(TentConfig):
    """Attributes (besides TENT's): max_entropy (normalised entropy below which a pixel is reliable),
    anchor_weight (weight of ``‖θ − θ_anchor‖²``)."""

    max_entropy: float = 0.4
    anchor_weight: float = 1.0


@dataclass(frozen=True)
class CottaConfig(TentConfig):
    """Attributes (besides TENT's): ema (teacher's α), restore_p (share of weights restored per step),
    confidence (anchor confidence below which pseudo labels are view-averaged), scales / flip (views)."""

    lr: float = 1e-5
    ema: float = 0.999
    restore_p: float = 0.01
    confidence: float = 0.92
    scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    flip: bool = True


def _student_logits(state, x: Tensor) -> Tensor:
    with train_norm(state.student):
        return state.student(x)


def tent_step(x: Tensor, state, cfg: TentConfig, anchor_logits: Tensor) -> dict[str, Tensor]:
    return {"entropy": tent_loss(_student_logits(state, x))}


def bnstats_step(x: Tensor, state, cfg: TentConfig, anchor_logits: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        _student_logits(state, x)  # the train-mode forward updates the running statistics
    return {}


def anchored_step(x: Tensor, state, cfg: AnchoredConfig, anchor_logits: Tensor) -> dict[str, Tensor]:
    return {"entropy": reliable_entropy_loss(_student_logits(state, x), cfg.max_entropy),
            "anchor": cfg.anchor_weight * anchor_penalty(state.params, state.anchor_params)}


def cotta_step(x: Tensor, state, cfg: CottaConfig, anchor_logits: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        teacher_logits = state.predictor(x)
        averaged = view_averaged_probs(state.predictor, x, cfg.scales, cfg.flip)
        target = cotta_targets(teacher_logits.softmax(1), averaged, anchor_logits.softmax(1), cfg.confidence)
    return {"consistency": soft_cross_entropy(_student_logits(state, x), target)}


def cotta_after_step(state, cfg: CottaConfig) -> None:
    # The teacher takes the student's BN running statistics: they are the target domain's.
    ema_update(state.predictor, state.student, state.updates, cfg.ema, buffers="copy", ramp=False)
    stochastic_restore_(state.params, state.anchor_params, cfg.restore_p, state.generator)


@dataclass(frozen=True)
class OnlineMethod:
    """A registered online method.

    Attributes:
        trains: ``norm`` (BatchNorm and LayerNorm affine parameters; the model must have one) or ``all``.
        teacher: predictions come from an EMA teacher of a separate student (else the student predicts).
    """

    name: str
    config: type
    step: Callable[..., dict]
    trains: str = "norm"
    teacher: bool = False
    after_step: Optional[Callable[[Any, Any], None]] = None
    description: str = ""

    def make_config(self, options: Optional[dict[str, Any]] = None):
        """The method's defaults with ``options`` (``--adapt-set``) applied, every key, type and range checked
        (``config_values.build_options``)."""
        return build_options(self.config, dict(options or {}), f"--adapt {self.name}",
                             lambda name: f"--adapt-set {name}")


# The registry: name → method, each name written once (in its OnlineMethod). ``segment --adapt``'s choices,
# help and errors are read from it.
ONLINE_METHODS: dict[str, OnlineMethod] = {}


def register_online(method: OnlineMethod) -> None:
    """Make ``method`` valid for ``segment --adapt`` (and its options for ``--adapt-set``)."""
    ONLINE_METHODS[method.name] = method


for _method in (
    OnlineMethod("tent", TentConfig, tent_step, description="entropy on BatchNorm affine parameters"),
    OnlineMethod("cotta", CottaConfig, cotta_step, trains="all", teacher=True, after_step=cotta_after_step,
                 description="EMA teacher, view-averaged pseudo labels, stochastic restore"),
    OnlineMethod("bnstats", TentConfig, bnstats_step,
                 description="BatchNorm statistics only, no gradient: the training-free baseline"),
    OnlineMethod("anchored", AnchoredConfig, anchored_step,
                 description="ours: reliable-pixel entropy on BatchNorm, pulled to the starting weights"),
):
    register_online(_method)


def online_method_names(separator: str = "|") -> str:
    """The registered names, e.g. ``tent|cotta|bnstats|anchored`` (for help and error lines)."""
    return separator.join(ONLINE_METHODS)


def get_online_method(name: str) -> OnlineMethod:
    if name not in ONLINE_METHODS:
        raise SfdaError(f"unknown --adapt method '{name}'{suggest(name, ONLINE_METHODS)}: "
                        f"choose one of {', '.join(ONLINE_METHODS)}")
    return ONLINE_METHODS[name]
