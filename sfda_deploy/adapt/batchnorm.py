"""BatchNorm statistics re-estimated on target images (AdaBN, Li et al. 2016): the weights stay, the
per-channel running mean and variance become the target's.

Pure of I/O: a model and an iterable of input batches in, the model's BN buffers changed in place.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sfda_deploy.messages import plural


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers that keep running statistics (``track_running_stats=True``)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every BN layer's running statistics by their cumulative average over ``batches``.

    One forward per batch with the BN layers in train mode (each normalises with its batch's
    statistics and adds them to its running ones) and every other module in eval mode (dropout off),
    without gradients. ``momentum=None`` makes the running statistics the equal-weight average of the
    per-batch ones, so the result does not depend on the order of the batches (with batches of one
    image it does not depend on how they are grouped either):
    ``running_mean = (1/N) Σ_n mean_n``, ``running_var = (1/N) Σ_n var_n`` (unbiased per batch).
    Weights, biases, the modules' train/eval modes and the layers' momenta are left as they were.

    Args:
        model: network with BN layers (``batchnorm_layers``), on the batches' device.
        batches: model inputs ``[B,3,H,W]`` (already normalised); sizes may differ between batches.

    Returns:
        the number of batches seen.

    Raises:
        ValueError: the model has no BN layer with running statistics, or ``batches`` is empty (the
            statistics are then left untouched).
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError("the model has no BatchNorm layer with running statistics")
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    seen = 0
    try:
        model.eval()
        for x in batches:
            if seen == 0:  # reset only once there is something to average
                for m in layers:
                    m.reset_running_stats()
                    m.momentum = None
                    m.train()
            model(x)
            seen += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    if seen == 0:
        raise ValueError("no batches to re-estimate the BatchNorm statistics from")
    return seen


def norm_parameter_names(model: nn.Module, layer_norm: bool = False) -> list[str]:
    """Names of the BatchNorm affine parameters (weight and bias) of ``model``; with ``layer_norm``, of its
    LayerNorms too (a transformer's norms: what test-time adaptation trains there)."""
    kinds = (_BatchNorm, nn.LayerNorm) if layer_norm else (_BatchNorm,)
    return [f"{m_name}.{p_name}" if m_name else p_name
            for m_name, m in model.named_modules() if isinstance(m, kinds)
            for p_name, _ in m.named_parameters(recurse=False)]


def layer_norm_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.LayerNorm) for m in model.modules())


def statistics_scope(model: nn.Module, what: str) -> str | None:
    """For a model that also normalises with LayerNorm (no running statistics), the sentence saying which
    layers a statistics-only adaptation (``what``: AdaBN, bnstats) can reach; None for a BatchNorm model."""
    layer_norms = layer_norm_count(model)
    if not layer_norms:
        return None
    names = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    where = ", ".join(sorted({n.split(".")[0] + "." for n in names})) or "none"
    return (f"{what} can reach only the running statistics of the model's {plural(len(names), 'BatchNorm layer')} (in "
            f"{where}); its {layer_norms} LayerNorm layers have none and stay as they are")


@contextmanager
def train_norm(model: nn.Module):
    """BatchNorm layers in train mode (batch statistics, running statistics updated) inside the block;
    everything else (dropout) stays in eval mode. The model is in eval mode afterwards."""
    model.eval()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.train()
    try:
        yield model
    finally:
        model.eval()



def train_mode(model: nn.Module, student_bn: str = "train") -> nn.Module:
    """``model`` in train mode for an optimisation step; with ``student_bn`` other than ``train`` its BatchNorm
    layers stay in eval mode (normalised with their running statistics, which stay as they are; γ and β still
    train). Returns ``model``."""
    model.train()
    if student_bn != "train":
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.eval()
    return model
