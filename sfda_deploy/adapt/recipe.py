"""A run's recipe, assembled from ``adapt``'s flags: the method's config (``--set`` and the common flags),
its stages (``--stages``, ``--propagate``'s stage P, a black-box source's distillation stage D), the
student and its metadata, and crops that fit the target frames.

The ``--set`` keys ``propagate.<key>`` and ``distill.<key>`` are split off here, in one place
(``split_options``); ``assemble`` is everything ``run_adapt`` needs before it opens the data.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sfda_deploy.adapt.blackbox import is_onnx
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.adapt.methods.base import Method, Stage
from sfda_deploy.checkpoint import load_model
from sfda_deploy.config import AdaptConfig
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import say
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import MODELS, build_model, get_builder

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


def assemble(cfg: AdaptConfig, device: torch.device) -> Recipe:
    """The recipe of ``sfda-deploy adapt`` (see module doc): method, config, stages, student, metadata.

    Raises:
        SfdaError: a labelled method, options of a stage that does not run, distillation without a
            black-box source, a black-box source without ``--arch``.
    """
    method = get_method(cfg.method)
    stages = method.select(cfg.stages)
    if any(s.labels for s in stages):
        raise SfdaError(f"method '{cfg.method}' trains on target labels: use 'sfda-deploy train-source' for it")
    options, prop_options, distill_options = split_options(dict(cfg.options))
    common = dict(iters=cfg.iters, batch=cfg.batch, crop=tuple(cfg.crop) if cfg.crop else None, lr=cfg.lr)
    mcfg = method_config(cfg, method, options, common)
    stages = with_propagation(cfg, stages, mcfg, prop_options, common)
    if is_onnx(cfg.source or ""):
        if distill_options and cfg.method == "distill":
            raise SfdaError("with --method distill set its options directly (--set key=value), not distill.<key>")
        model, meta, stages = blackbox_student(cfg, device, mcfg, stages, distill_options)
    else:
        if cfg.method == "distill" or distill_options:
            raise SfdaError(f"distillation needs a black-box source: pass --source model.onnx --arch ARCH "
                            f"(not {cfg.source})")
        model, meta = load_source(cfg, device)
    return Recipe(method, mcfg, tuple(stages), model, meta)


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


def load_source(cfg: AdaptConfig, device):
    if cfg.arch or cfg.class_set or cfg.normalization:
        raise SfdaError("--arch/--class-set/--normalization describe the student of a black-box .onnx source: "
                        f"drop them (the checkpoint {cfg.source} carries its own architecture and classes)")
    return load_model(cfg.source, device)


def with_propagation(cfg: AdaptConfig, stages: tuple, mcfg, prop_options: dict, common: dict) -> tuple:
    """``--propagate``: ATP's stage P appended to any method's stages (with ``--set propagate.k=v``)."""
    from sfda_deploy.adapt.methods.atp import AtpConfig, propagation_config, propagation_stage

    if not cfg.propagate or any(s.name == "P" for s in stages):
        if prop_options:
            raise SfdaError("--set propagate.<key> options apply only with --propagate after a method without "
                            "its own stage P: drop them or add --propagate")
        return stages
    if isinstance(mcfg, AtpConfig):  # ATP without P selected: its own P with the recipe's config
        if prop_options:
            raise SfdaError("with --method atp set stage P's options directly (--set key=value), not propagate.<key>")
        return stages + (propagation_stage(mcfg),)
    return stages + (propagation_stage(propagation_config(prop_options, **common)),)


def blackbox_student(cfg: AdaptConfig, device, mcfg, stages: tuple, distill_options: dict):
    """A black-box ``.onnx`` source → (random-init student of ``--arch``, its meta, D + method stages).

    Stage D (``methods/distill.py``) distils the student from the source through ONNX Runtime; the
    method's own stages follow (under ``--method distill`` D runs alone, with the method's config).
    """
    from sfda_deploy.adapt.blackbox import BlackBoxTeacher
    from sfda_deploy.adapt.methods.distill import DistillConfig, distill_stage

    if not cfg.arch:
        raise SfdaError(f"a black-box source ({cfg.source}) needs the student's architecture: pass --arch, "
                        f"one of {', '.join(sorted(MODELS))}")
    get_builder(cfg.arch)  # unknown names fail before the source is opened
    teacher = BlackBoxTeacher.open(cfg.source, cfg.device, cfg.class_set, cfg.normalization)
    if isinstance(mcfg, DistillConfig):
        dcfg = mcfg
        if cfg.crop is None and "crop" not in cfg.options and teacher.input_hw:
            dcfg = dataclasses.replace(dcfg, crop=teacher.input_hw)
        stages = ()
    else:
        crop = tuple(cfg.crop) if cfg.crop else teacher.input_hw
        dcfg = get_method("distill").make_config(distill_options, batch=cfg.batch, crop=crop)
    tmeta = teacher.meta
    seed_all(cfg.seed)  # the student's random initialisation is part of the run's seed
    model = build_model(cfg.arch, num_classes=tmeta.num_classes).to(device)
    meta = ModelMeta(arch=cfg.arch, class_set=tmeta.class_set, num_classes=tmeta.num_classes, mean=tmeta.mean,
                     std=tmeta.std, channel_order=tmeta.channel_order, input_size=tmeta.input_size,
                     align_corners=model.align_corners,
                     extra={k: v for k, v in tmeta.extra.items() if k == "normalization"})
    meta = meta.with_provenance(command="distill", source=Path(cfg.source).name, sha256=teacher.sha256,
                                providers=list(teacher.providers), temperature=dcfg.temperature,
                                iterations=dcfg.iters)
    return model, meta, (distill_stage(teacher, dcfg),) + tuple(stages)


def method_config(cfg: AdaptConfig, method, options: dict, common: dict):
    """The method's config with ``--set`` options and the common flags (``--iters``...).

    A training-free method (AdaBN) takes no budget: the common flags are refused, unless ``--propagate``
    appends stage P, which takes them.
    """
    if method.trains:
        return method.make_config(options, **common)
    given = [f"--{k}" for k, v in common.items() if v is not None]
    if given and not cfg.propagate:
        raise SfdaError(f"--method {method.name} trains nothing (one pass over the whole target images "
                        f"re-estimates statistics): drop {', '.join(given)}")
    return method.make_config(options)
