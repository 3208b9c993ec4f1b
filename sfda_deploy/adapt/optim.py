"""Optimiser and learning-rate schedule of the loop (pure, no I/O)."""
from __future__ import annotations

import torch

from sfda_deploy.errors import SfdaError


def lr_factor(t: int, total: int, warmup_iters: int, warmup_ratio: float, power: float) -> float:
    """Multiplier of the base lr at iteration ``t`` (0-based): linear warm-up, then poly decay.

    mmcv's poly + linear warm-up: poly = (1 − t/T)^power; during warm-up (t < warmup_iters) the
    factor is poly · (1 − (1 − t/warmup_iters)·(1 − warmup_ratio)).
    """
    poly = max(0.0, 1.0 - t / max(total, 1)) ** power
    if t < warmup_iters:
        return poly * (1.0 - (1.0 - t / warmup_iters) * (1.0 - warmup_ratio))
    return poly


def schedule_position(t: int, iters: int, round_begin: int, poly_horizon: int) -> tuple[int, int]:
    """(step, horizon) the poly schedule is evaluated at for stage iteration ``t``.

    ``poly_horizon`` 0: the stage's own budget, ``(t, iters)``. ``N > 0``: ``N`` steps counted from the
    start of the current round (``round_begin``), as a recipe that restarts its schedule every round
    over a fixed horizon does (LDBE: ``num_steps`` 5000, restarted per round).
    """
    return (t - round_begin, poly_horizon) if poly_horizon else (t, iters)


def build_optimizer(model: torch.nn.Module, extras: dict, cfg) -> torch.optim.Optimizer:
    """Two groups: backbone at ``cfg.lr``, head parameters (and method extras) at ``lr·head_lr_mult``.

    Each group stores its base lr in ``initial_lr`` so the schedule rescales both.
    """
    head_ids = {id(p) for p in model.head_parameters()}
    base = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.parameters() if p.requires_grad and id(p) in head_ids]
    for m in extras.values():
        head += [p for p in m.parameters() if p.requires_grad]
    groups = [{"params": base, "initial_lr": cfg.lr},
              {"params": head, "initial_lr": cfg.lr * cfg.head_lr_mult}]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = g["initial_lr"]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise SfdaError(f"unknown optimizer '{cfg.optimizer}': use --set optimizer=adamw or sgd")


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
