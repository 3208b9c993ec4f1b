"""Published checkpoint layouts mapped onto the registry's models (``to_registry``).

Two things are settled here before the strict load: which network of a UDA trainer's checkpoint is
meant (DAFormer/ATP save the student as ``model.``, the EMA teacher as ``ema_model.``, the ImageNet
feature-distance model as ``imnet_model.``; the student is the default, ``prefix`` picks another)
and, for MiT models, which released key layout the file uses (``pth_layouts.mit``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sfda_deploy.errors import SfdaError
from sfda_deploy.pth_layouts import mit

UDA_MODELS = ("model", "ema_model", "imnet_model")
UNUSED_PARTS = ("auxiliary_head.",)  # training-only heads (ATP's projector): not part of the predictor


@dataclass
class Mapped:
    """Weights in the registry's names, what was read from where, and the options the layout implies."""

    state: dict[str, torch.Tensor]
    layout: str = "as saved"
    uda_model: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        where = f", {self.uda_model} of a UDA trainer checkpoint" if self.uda_model else ""
        return f"{self.layout} layout{where}"


def select_uda_model(state: dict[str, torch.Tensor], prefix: str | None, source: str):
    """The weights of one network of a UDA trainer checkpoint (student by default), prefix stripped.

    Returns ``(state, chosen prefix or None)``; a plain state dict passes through unless ``prefix`` is set.
    """
    present = [p for p in UDA_MODELS if any(k.startswith(p + ".") for k in state)]
    if prefix is not None:
        prefix = prefix.rstrip(".")
    if not present:
        if prefix:
            raise SfdaError(f"--pth-prefix {prefix}: {source} is not a UDA trainer checkpoint (no "
                            f"{'./'.join(UDA_MODELS)}. keys): drop --pth-prefix")
        return state, None
    chosen = prefix or "model"
    if chosen not in present:
        raise SfdaError(f"{source} holds no '{chosen}.' weights (it holds {', '.join(p + '.' for p in present)}): "
                        f"choose --pth-prefix {' or '.join(present)}")
    return {k[len(chosen) + 1:]: v for k, v in state.items() if k.startswith(chosen + ".")}, chosen


def to_registry(state: dict[str, torch.Tensor], builder, arch: str, prefix: str | None, source: str) -> Mapped:
    """``state`` as ``builder``'s model names it.

    Raises:
        SfdaError: ``prefix`` absent or not a UDA file; a MiT file of another family or size than ``arch``.
    """
    state, chosen = select_uda_model(state, prefix, source)
    family = getattr(builder, "family", "")
    if not family:
        return Mapped(state, uda_model=chosen)
    dropped = [k for k in state if k.startswith(UNUSED_PARTS)]
    state = {k: v for k, v in state.items() if k not in dropped}
    layout = mit.detect(state)
    if layout is None:
        return Mapped(state, "unknown", chosen, dropped=dropped)
    state, unused = mit.to_registry(state, layout)
    mit.check_fits(state, layout, arch, family, builder.variant, source)
    return Mapped(state, layout.name, chosen, dict(layout.arch_kwargs), dropped + unused)
