"""A run's recipe (``Recipe``): the method's config, its stages, the student and its metadata; the pieces
that do not read flags: ``--set``'s ``propagate.<key>`` and ``distill.<key>`` split off in one place
(``split_options``), each stage's checks, crops that fit the target frames, the global seeds.

``adapt``'s flags become a recipe in ``commands.adapt_recipe.assemble``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from sfda_deploy.adapt.methods.base import Method, Stage
from sfda_deploy.messages import say
from sfda_deploy.metadata import ModelMeta

STAGE_PREFIXES = ("propagate", "distill")  # --set <prefix>.<key>: options of --propagate's P, of stage D


@dataclass
class Recipe:
    """What a run trains: ``method`` with its config ``cfg`` over ``stages`` (a borrowed stage carries its
    own ``Stage.cfg``), starting from ``model`` (on the device) described by ``meta``."""

    method: Method
    cfg: Any
    stages: tuple[Stage, ...]
    model: torch.nn.Module
    meta: ModelMeta


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``--set`` options → (the method's own, stage P's ``propagate.<key>``, stage D's ``distill.<key>``)."""
    own, borrowed = {}, {prefix: {} for prefix in STAGE_PREFIXES}
    for key, value in options.items():
        prefix, _, rest = key.partition(".")
        if rest and prefix in borrowed:
            borrowed[prefix][rest] = value
        else:
            own[key] = value
    return own, borrowed["propagate"], borrowed["distill"]


def check_stages(recipe: Recipe, images: int) -> None:
    """Each stage's own checks of the target set's size and of the model (before anything is written)."""
    for s in recipe.stages:
        if s.check is not None:
            s.check(images, s.cfg if s.cfg is not None else recipe.cfg)
        if s.check_model is not None:
            s.check_model(recipe.model)


def fit_crop(crop: tuple[int, int], frame: tuple[int, int]) -> tuple[int, int]:
    """The recipe's crop ``(H, W)`` cut down to the frames ``(H, W)``: side by side, the smaller of the two."""
    return min(int(crop[0]), int(frame[0])), min(int(crop[1]), int(frame[1]))


def fit_crops(recipe: Recipe, frame: tuple[int, int], explicit: bool) -> Recipe:
    """Crops larger than the target frames train on padding (black image, ignored label), not on the images.

    A recipe's default crop (ATP's 640x640 is for 1024x2048 Cityscapes) is cut down to the frames, with a
    warning; a crop the user gave (``--crop``, ``--set crop=``) is kept as asked, with a warning.
    Returns the recipe with the crops used (the method's config and each borrowed stage's).
    """

    mcfg, stages = recipe.cfg, recipe.stages
    too_big = [c for c in [mcfg, *(s.cfg for s in stages if s.cfg is not None)]
               if hasattr(c, "crop") and fit_crop(c.crop, frame) != tuple(c.crop)]
    if not too_big:
        return recipe
    size = f"{too_big[0].crop[0]}x{too_big[0].crop[1]}"
    fitted = fit_crop(too_big[0].crop, frame)
    if explicit:
        say(f"warning: --crop {size} is larger than the {frame[0]}x{frame[1]} target images: the rest of "
                   f"each crop is padding (black, ignored); --crop {fitted[0]} {fitted[1]} covers whole images")
        return recipe
    say(f"warning: the recipe's crop {size} is larger than the {frame[0]}x{frame[1]} target images and "
               f"would train mostly on padding: using {fitted[0]}x{fitted[1]} (pass --crop H W to choose)")

    def fitted_cfg(c):
        return dataclasses.replace(c, crop=fit_crop(c.crop, frame)) if hasattr(c, "crop") else c

    stages = tuple(dataclasses.replace(s, cfg=fitted_cfg(s.cfg)) if s.cfg is not None else s for s in stages)
    return dataclasses.replace(recipe, cfg=fitted_cfg(mcfg), stages=stages)


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (the student's random initialisation)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
