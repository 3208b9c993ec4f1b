"""The state of one online adaptation and its one update step (with the drift check and the reset).

``start(model, "tent")`` prepares ``model`` in place (it keeps predicting: the backend's network is
``state.predictor``) and keeps a frozen copy of its weights as the anchor; ``update(state, x)`` adapts
on a batch of frames and resets to the anchor when the detector (``drift``) fires. Memory is fixed:
the anchor, the optimizer's moments and, for CoTTA, one student copy; nothing grows with the stream.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from sfda_deploy.adapt.batchnorm import batchnorm_layers, layer_norm_count, norm_parameter_names, statistics_scope
from sfda_deploy.adapt.online.drift import DriftConfig, drift_reason, drift_scores
from sfda_deploy.adapt.online.methods import OnlineMethod, get_online_method
from sfda_deploy.adapt.teacher import make_teacher
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import say


@dataclass
class OnlineState:
    """Everything an update reads and changes.

    Attributes:
        predictor: the network inference runs (the student, or CoTTA's EMA teacher); eval mode.
        student: the network the optimizer trains (the predictor itself for TENT / anchored).
        anchor: frozen copy of the starting weights (reset target, drift reference).
        params / anchor_params: the trained tensors and the anchor's values of them.
        updates / resets: counts so far.
    """

    method: OnlineMethod
    cfg: Any
    predictor: nn.Module
    student: nn.Module
    anchor: nn.Module
    params: list[Tensor]
    anchor_params: list[Tensor]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
    updates: int = 0
    resets: int = 0


@dataclass(frozen=True)
class UpdateResult:
    losses: dict[str, float]
    scores: dict[str, float]
    reset: Optional[str]  # why the model was reset to the anchor, or None


def _trained(method: OnlineMethod, student: nn.Module) -> list[str]:
    """The trained parameters' names: every weight, or the norm layers' affine parameters (BatchNorm, and
    LayerNorm for a transformer, as test-time adaptation does there); says which on a LayerNorm model."""
    if method.trains != "norm":
        return [n for n, _ in student.named_parameters()]
    names = norm_parameter_names(student, layer_norm=True)
    if not names:
        raise SfdaError(f"--adapt {method.name} adapts normalisation layers (BatchNorm, LayerNorm) but the model "
                        "has none: use --adapt cotta (it adapts every weight), or a model with BatchNorm")
    layer_norms = layer_norm_count(student)
    if layer_norms and method.name == "bnstats":
        say(f"note: {statistics_scope(student, '--adapt bnstats')}")
    elif layer_norms:
        say(f"note: --adapt {method.name} trains the affine parameters of the model's {layer_norms} LayerNorm and "
            f"{len(batchnorm_layers(student))} BatchNorm layers ({len(names)} tensors); BatchNorm statistics follow "
            "the stream too")
    return names


def start(model: nn.Module, method: str, options: Optional[dict[str, Any]] = None, seed: int = 0) -> OnlineState:
    """Prepare ``model`` (in place, on its device) for online adaptation with ``method``.

    Raises:
        SfdaError: unknown method or option, or a BatchNorm method on a model without BatchNorm.
    """
    m = get_online_method(method)
    cfg = m.make_config(options)
    model.eval()
    anchor = make_teacher(model, bn="eval")
    student = copy.deepcopy(model) if m.teacher else model
    names = set(_trained(m, student))
    for name, p in student.named_parameters():
        p.requires_grad_(name in names)
    if m.teacher:
        for p in model.parameters():
            p.requires_grad_(False)
    for layer in student.modules():
        if isinstance(layer, _BatchNorm):
            layer.momentum = cfg.bn_momentum
    anchor_by_name = dict(anchor.named_parameters())
    params = [p for n, p in student.named_parameters() if n in names]
    anchor_params = [anchor_by_name[n] for n, _ in student.named_parameters() if n in names]
    return OnlineState(m, cfg, model, student, anchor, params, anchor_params,
                       torch.optim.Adam(params, lr=cfg.lr), torch.Generator().manual_seed(seed))


@torch.no_grad()
def reset(state: OnlineState) -> None:
    """Back to the anchor: weights and BatchNorm statistics of student and predictor, optimizer moments."""
    anchor = state.anchor.state_dict()
    for net in {id(state.student): state.student, id(state.predictor): state.predictor}.values():
        for key, value in net.state_dict().items():
            value.copy_(anchor[key])
    state.optimizer.state.clear()
    state.resets += 1


def update(state: OnlineState, x: Tensor, drift: Optional[DriftConfig] = DriftConfig()) -> UpdateResult:
    """One adaptation step on ``x`` (``[B,3,H,W]`` network input), then the drift check.

    The check judges the predictor's logits of ``x`` after the step (eval mode: what inference will output)
    against the anchor's; beyond a bound (``drift``; None: no check) the state is ``reset``.
    """
    with torch.no_grad():
        anchor_logits = state.anchor(x)
    losses = state.method.step(x, state, state.cfg, anchor_logits)
    total = sum(losses.values())
    state.optimizer.zero_grad(set_to_none=True)
    if isinstance(total, Tensor) and total.requires_grad:  # bnstats: no loss, no step
        total.backward()
        state.optimizer.step()
    if state.method.after_step is not None:
        state.method.after_step(state, state.cfg)
    state.updates += 1
    if drift is None:
        return UpdateResult({k: float(v.detach()) for k, v in losses.items()}, {}, None)
    with torch.no_grad():
        scores = drift_scores(state.predictor(x), anchor_logits)
    reason = drift_reason(scores, drift)
    if reason is not None:
        reset(state)
    return UpdateResult({k: float(v.detach()) for k, v in losses.items()}, scores, reason)
