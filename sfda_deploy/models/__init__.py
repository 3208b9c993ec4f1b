"""Model registry: name → builder. ``build_model("deeplabv2_r101", num_classes=19)``."""
from __future__ import annotations

from typing import Callable

from sfda_deploy.classes import suggest
from sfda_deploy.errors import SfdaError
from sfda_deploy.models.base import SegmentationModel
from sfda_deploy.models.deeplabv2 import DeepLabV2R50, DeepLabV2R101
from sfda_deploy.models.mobilenet import MobileNetV2ASPP
from sfda_deploy.models.segformer import DAFORMERS, SEGFORMERS
from sfda_deploy.models.tiny import TinyNet

MODELS: dict[str, Callable[..., SegmentationModel]] = {
    "deeplabv2_r101": DeepLabV2R101,
    "deeplabv2_r50": DeepLabV2R50,
    "mobilenetv2_aspp": MobileNetV2ASPP,
    "tiny": TinyNet,
    **SEGFORMERS,
    **DAFORMERS,
}


def register(name: str, builder: Callable[..., SegmentationModel]) -> None:
    MODELS[name] = builder


def get_builder(name: str) -> Callable[..., SegmentationModel]:
    """The registered builder (a model class); unknown names get the list of valid ones."""
    if name not in MODELS:
        raise SfdaError(
            f"unknown model '{name}'{suggest(name, MODELS)}: choose one of {', '.join(sorted(MODELS))}"
        )
    return MODELS[name]


def model_names() -> str:
    """The registry's names for help texts, each MiT family as one entry (``segformer_b0…b5``)."""
    sized = {**SEGFORMERS, **DAFORMERS}
    return ", ".join([n for n in sorted(MODELS) if n not in sized] + ["segformer_b0…b5", "daformer_mitb0…b5"])


def build_model(name: str, num_classes: int = 19, **kwargs) -> SegmentationModel:
    """Build a registered architecture; unknown names get the list of valid ones."""
    builder = get_builder(name)
    try:
        return builder(num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise SfdaError(f"bad options for model '{name}' ({e}): check --arch options") from None


__all__ = ["MODELS", "SegmentationModel", "build_model", "get_builder", "model_names", "register"]
