"""``adapt``'s flags → its ``Recipe`` (``adapt.recipe``): the method's config (``--set`` and the common flags),
its stages (``--stages``, ``--propagate``'s stage P, a black-box source's distillation stage D), the
student and its metadata. ``assemble`` is everything ``run_adapt`` needs before it opens the data.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from sfda_deploy.adapt.blackbox import is_onnx
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.adapt.recipe import Recipe, seed_all, split_options
from sfda_deploy.checkpoint import load_model
from sfda_deploy.config import AdaptConfig
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import MODELS, build_model, get_builder


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
