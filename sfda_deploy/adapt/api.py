"""``train-source`` and ``adapt``: configs → datasets, models, run directory → the loop."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader

from sfda_deploy.adapt import distributed as D
from sfda_deploy.adapt.loop import LoopJob, load_resume, run
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.checkpoint import load_model
from sfda_deploy.device import select_device
from sfda_deploy.config import AdaptConfig, TrainSourceConfig, option_label, resume_changes
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural, require_options
from sfda_deploy.metadata import NORMALIZATIONS, ModelMeta
from sfda_deploy.adapt.blackbox import is_onnx
from sfda_deploy.models import MODELS, build_model, get_builder
from sfda_deploy.runs import (INCOMPLETE, clean_stale_temporaries, finish_run, new_run_dir, run_logger, run_status,
                              start_run, write_json, write_yaml, written_by_another_process)


def open_dataset(target: str, data_root: Optional[str], split: str, class_set: str):
    """``sfda_deploy.data.build_dataset`` (contract in docs/contracts.md)."""
    from sfda_deploy.data import build_dataset

    return build_dataset(target, data_root, split, class_set=class_set)


def _train_set(target, data_root, split, class_set):
    ds = open_dataset(target, data_root, split, class_set)
    if len(ds) == 0:
        raise SfdaError(f"the {target} {split} split under {data_root} has no images: check --data-root/--split")
    ds_set = getattr(ds, "class_set", class_set)
    if ds_set != class_set:
        raise SfdaError(f"target labels use class set {ds_set} but the model predicts {class_set}: "
                        "use a checkpoint trained on the same class set")
    return ds


def _frame_size(dataset) -> tuple[int, int]:
    """``(H, W)`` of the dataset's first image: the size the model is deployed at (not the training crop)."""
    return tuple(int(v) for v in dataset[0]["image"].shape[-2:])


def fit_crop(crop: tuple[int, int], frame: tuple[int, int]) -> tuple[int, int]:
    """The recipe's crop ``(H, W)`` cut down to the frames ``(H, W)``: side by side, the smaller of the two."""
    return min(int(crop[0]), int(frame[0])), min(int(crop[1]), int(frame[1]))


def _fit_crops(mcfg, stages: tuple, frame: tuple[int, int], explicit: bool):
    """Crops larger than the target frames train on padding (black image, ignored label), not on the images.

    A recipe's default crop (ATP's 640x640 is for 1024x2048 Cityscapes) is cut down to the frames, with a
    warning; a crop the user gave (``--crop``, ``--set crop=``) is kept as asked, with a warning.
    Returns ``(method config, stages)`` with the crops used.
    """
    import click

    too_big = [c for c in [mcfg, *(s.cfg for s in stages if s.cfg is not None)]
               if hasattr(c, "crop") and fit_crop(c.crop, frame) != tuple(c.crop)]
    if not too_big:
        return mcfg, stages
    size = f"{too_big[0].crop[0]}x{too_big[0].crop[1]}"
    fitted = fit_crop(too_big[0].crop, frame)
    if explicit:
        click.echo(f"warning: --crop {size} is larger than the {frame[0]}x{frame[1]} target images: the rest of "
                   f"each crop is padding (black, ignored); --crop {fitted[0]} {fitted[1]} covers whole images")
        return mcfg, stages
    click.echo(f"warning: the recipe's crop {size} is larger than the {frame[0]}x{frame[1]} target images and "
               f"would train mostly on padding: using {fitted[0]}x{fitted[1]} (pass --crop H W to choose)")

    def fitted_cfg(c):
        return dataclasses.replace(c, crop=fit_crop(c.crop, frame)) if hasattr(c, "crop") else c

    stages = tuple(dataclasses.replace(s, cfg=fitted_cfg(s.cfg)) if s.cfg is not None else s for s in stages)
    return fitted_cfg(mcfg), stages


def _eval_set(target, data_root, split, class_set):
    """The labelled evaluation split, or None when it is missing or unlabelled."""
    try:
        ds = open_dataset(target, data_root, split, class_set)
    except SfdaError:
        return None
    if len(ds) == 0 or "label" not in ds[0]:
        return None
    return ds


def _eval_fn(dataset, meta, device, progress):
    if dataset is None:
        return None
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)
    from sfda_deploy.evaluate import evaluate_model

    return lambda model: evaluate_model(model, meta, loader, device, progress=progress)


def _evaluation(cfg, dataset, meta, device, rank: int) -> dict:
    """``LoopJob``'s ``eval_fn`` and ``eval_name`` (what it scores, for the plots) for ``cfg.eval_split``."""
    name = "" if dataset is None else f"{cfg.target} {cfg.eval_split} of {cfg.data_root} ({plural(len(dataset), 'image')})"
    return {"eval_fn": _eval_fn(dataset, meta, device, rank == 0), "eval_name": name}


def _device(name: str, local_rank: int) -> torch.device:
    """The process's device: under torchrun a CUDA job runs on ``cuda:local_rank``."""
    return select_device(name, local_rank if D.active() else None)


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _run_dir(command: str, name: str, rank: int) -> Optional[Path]:
    path = new_run_dir(command, name) if rank == 0 else None
    return D.broadcast_object(path)


# ---- train-source --------------------------------------------------------------------------
def run_train_source(cfg: TrainSourceConfig) -> Path:
    """Supervised source training on the loop; writes ``model.safetensors`` with its metadata."""
    require_options("train-source", {"--data-root": cfg.data_root},
                    f"sfda-deploy train-source --target {cfg.target} --data-root DATA --arch {cfg.arch}",
                    "no labelled data yet? 'sfda-deploy generate-data --out data/synth --size 128 256' writes one "
                    "(then --data-root data/synth/source)")
    rank, world, local = D.init(cfg.device)
    device = _device(cfg.device, local)
    if cfg.normalization not in NORMALIZATIONS:
        raise SfdaError(f"unknown normalization '{cfg.normalization}': use {', '.join(NORMALIZATIONS)}")
    from sfda_deploy.classes import get_class_set

    classes = get_class_set(cfg.class_set)
    train = _train_set(cfg.target, cfg.data_root, cfg.split, cfg.class_set)
    norm = NORMALIZATIONS[cfg.normalization]
    _seed_all(cfg.seed)
    if cfg.init:
        model, meta = load_model(cfg.init, device)
        if meta.class_set != cfg.class_set:
            raise SfdaError(f"--init {cfg.init} predicts {meta.class_set}, not {cfg.class_set}: "
                            "pass --class-set to match or start from scratch")
    else:
        model = build_model(cfg.arch, num_classes=classes.num_classes).to(device)
        meta = ModelMeta(arch=cfg.arch, class_set=cfg.class_set, num_classes=classes.num_classes,
                         mean=tuple(norm["mean"]), std=tuple(norm["std"]), channel_order=norm["channel_order"],
                         input_size=_frame_size(train), align_corners=model.align_corners)
    method = get_method("supervised")
    mcfg = method.make_config({"augment": cfg.augment}, iters=cfg.iters, batch=cfg.batch, crop=tuple(cfg.crop),
                              lr=cfg.lr, optimizer=cfg.optimizer)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    run_dir = _run_dir("train-source", cfg.name, rank)
    if rank == 0:
        write_yaml(run_dir / "config.yaml", {**dataclasses.asdict(cfg), "recipe": dataclasses.asdict(mcfg)})
        write_json(run_dir / "meta.json", meta.to_dict())
    job = LoopJob(method=method, cfg=mcfg, stages=method.stages, student=model, meta=meta, train_set=train,
                  run_dir=run_dir, device=device, seed=cfg.seed, amp=cfg.amp, eval_every=cfg.eval_every,
                  **_evaluation(cfg, _eval_set(cfg.target, cfg.data_root, cfg.eval_split, cfg.class_set), meta,
                                device, rank),
                  workers=cfg.workers, rank=rank, world=world,
                  provenance={"command": "train-source", "target": cfg.target, "data_root": str(cfg.data_root),
                              "split": cfg.split},
                  logger=run_logger(run_dir) if rank == 0 else None)
    metrics = run(job)
    _report(run_dir, metrics, rank)
    if rank == 0:
        finish_run(run_dir)  # finished also when called as a library function (scripts), not only by the CLI
    return run_dir


def _report(run_dir, metrics, rank):
    if rank != 0:
        return
    import click

    last = [k for k in metrics if k not in ("before", "selection") and "eval" in metrics[k]]
    selection = metrics.get("selection")
    if selection and selection["fallback"]:
        what = "the source model" if selection["shipped"]["reference"] else (
            f"{selection['shipped']['stage']} iteration {selection['shipped']['iter']}")
        click.echo(f"fallback: shipped {what}: {selection['reason']}")
    if last:
        before = metrics.get("before", {}).get("miou")
        after = metrics[last[-1]]["eval"]["miou"]
        shipped = ((selection or {}).get("shipped") or {}).get("eval")
        click.echo(f"mIoU {before if before is not None else '-'} → {after} (last iteration)"
                   + (f", {shipped['miou']} shipped" if shipped else ""))
    click.echo(f"wrote {run_dir / 'model.safetensors'}")


# ---- adapt ---------------------------------------------------------------------------------
def _load_source(cfg: AdaptConfig, device):
    if cfg.arch or cfg.class_set or cfg.normalization:
        raise SfdaError("--arch/--class-set/--normalization describe the student of a black-box .onnx source: "
                        f"drop them (the checkpoint {cfg.source} carries its own architecture and classes)")
    return load_model(cfg.source, device)


def _with_propagation(cfg: AdaptConfig, stages: tuple, mcfg, prop_options: dict, common: dict) -> tuple:
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


def _blackbox_source(cfg: AdaptConfig, device, mcfg, stages: tuple, distill_options: dict):
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
    _seed_all(cfg.seed)  # the student's random initialisation is part of the run's seed
    model = build_model(cfg.arch, num_classes=tmeta.num_classes).to(device)
    meta = ModelMeta(arch=cfg.arch, class_set=tmeta.class_set, num_classes=tmeta.num_classes, mean=tmeta.mean,
                     std=tmeta.std, channel_order=tmeta.channel_order, input_size=tmeta.input_size,
                     align_corners=model.align_corners,
                     extra={k: v for k, v in tmeta.extra.items() if k == "normalization"})
    meta = meta.with_provenance(command="distill", source=Path(cfg.source).name, sha256=teacher.sha256,
                                providers=list(teacher.providers), temperature=dcfg.temperature,
                                iterations=dcfg.iters)
    return model, meta, (distill_stage(teacher, dcfg),) + tuple(stages)


def _method_config(cfg: AdaptConfig, method, options: dict, common: dict):
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


def _selection(spec, sample, split: str, meta, source: str, stages: tuple, run_dir: Path, rank: int):
    """The run's label-free selection: the fixed sample (loaded on rank 0, which scores) and what a
    fallback ships: the source checkpoint, or for a black-box source the student distilled in stage D
    (nothing when D is the only stage)."""
    from sfda_deploy.adapt.scoring import sample_indices
    from sfda_deploy.adapt.selection import Selection

    picks = sample_indices(len(sample), spec.images, spec.seed) if rank == 0 else []
    images = [sample[i]["image"] for i in picks]
    if not is_onnx(source):
        return Selection(spec, images, meta.classes.names, Path(source), None, split)
    if len(stages) > 1:
        return Selection(spec, images, meta.classes.names, run_dir / f"stage_{stages[0].name}.safetensors",
                         stages[0].name, split)
    return Selection(spec, images, meta.classes.names, None, None, split)


def run_adapt(cfg: AdaptConfig, run_dir: Optional[Path] = None) -> Path:
    """Source-free adaptation with ``cfg.method`` (stages ``cfg.stages``); returns the run directory.

    Args:
        run_dir: an existing empty directory to write into instead of a new ``runs/adapt/<name>``
            (``compare``'s per-method sub-runs); ignored when ``cfg.resume`` is set.
    """
    require_options("adapt", {"--source": cfg.source, "--data-root": cfg.data_root},
                    f"sfda-deploy adapt --target {cfg.target} --data-root DATA --source CKPT --method {cfg.method}")
    from sfda_deploy.adapt.selection import check_resume, check_sample, spec_of

    spec = spec_of(cfg)
    rank, world, local = D.init(cfg.device)
    device = _device(cfg.device, local)
    resume = None
    if cfg.resume:
        _refuse_finished(Path(cfg.resume))
        resume = load_resume(cfg.resume)
        if resume.get("method") != cfg.method:
            raise SfdaError(f"{cfg.resume} is a run of method '{resume.get('method')}', not '{cfg.method}': "
                            f"pass --method {resume.get('method')} or start a new run")
        check_resume(spec, resume, cfg.resume)
    method = get_method(cfg.method)
    stages = method.select(cfg.stages)
    if any(s.labels for s in stages):
        raise SfdaError(f"method '{cfg.method}' trains on target labels: use 'sfda-deploy train-source' for it")
    options = dict(cfg.options)
    prop_options = {k.split(".", 1)[1]: options.pop(k) for k in list(options) if k.startswith("propagate.")}
    distill_options = {k.split(".", 1)[1]: options.pop(k) for k in list(options) if k.startswith("distill.")}
    common = dict(iters=cfg.iters, batch=cfg.batch, crop=tuple(cfg.crop) if cfg.crop else None, lr=cfg.lr)
    mcfg = _method_config(cfg, method, options, common)
    stages = _with_propagation(cfg, stages, mcfg, prop_options, common)
    if is_onnx(cfg.source or ""):
        if distill_options and cfg.method == "distill":
            raise SfdaError("with --method distill set its options directly (--set key=value), not distill.<key>")
        model, meta, stages = _blackbox_source(cfg, device, mcfg, stages, distill_options)
    else:
        if cfg.method == "distill" or distill_options:
            raise SfdaError(f"distillation needs a black-box source: pass --source model.onnx --arch ARCH "
                            f"(not {cfg.source})")
        model, meta = _load_source(cfg, device)
    if resume is not None and [s.name for s in stages] != list(resume["stages"]):
        raise SfdaError(f"{cfg.resume} ran stages {','.join(resume['stages'])}: pass the same --stages "
                        "(and --propagate) to resume it")
    train = _train_set(cfg.target, cfg.data_root, cfg.split, meta.class_set)
    if method.trains or cfg.propagate:
        mcfg, stages = _fit_crops(mcfg, stages, _frame_size(train), bool(cfg.crop) or "crop" in cfg.options)
    for s in stages:
        if s.check is not None:
            s.check(len(train), s.cfg if s.cfg is not None else mcfg)
        if s.check_model is not None:
            s.check_model(model)
    evaluation = _eval_set(cfg.target, cfg.data_root, cfg.eval_split, meta.class_set)
    sample, split = (evaluation, cfg.eval_split) if evaluation is not None else (train, cfg.split)
    check_sample(len(sample), split)
    _seed_all(cfg.seed)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if resume is not None:
        run_dir = Path(cfg.resume)
        if rank == 0:
            _reopen(run_dir)
    elif run_dir is None:
        run_dir = _run_dir("adapt", cfg.name or cfg.method, rank)
    if rank == 0 and resume is None:
        write_yaml(run_dir / "config.yaml", {**dataclasses.asdict(cfg), "recipe": dataclasses.asdict(mcfg),
                                             "stage_recipes": {s.name: dataclasses.asdict(s.cfg)
                                                               for s in stages if s.cfg is not None}})
    job = LoopJob(method=method, cfg=mcfg, stages=stages, student=model, meta=meta, train_set=train,
                  run_dir=run_dir, device=device, seed=cfg.seed, amp=cfg.amp, eval_every=cfg.eval_every,
                  **_evaluation(cfg, evaluation, meta, device, rank),
                  workers=cfg.workers, rank=rank, world=world,
                  selection=_selection(spec, sample, split, meta, cfg.source, stages, run_dir, rank),
                  provenance={"command": "adapt", "source": str(cfg.source), "target": cfg.target,
                              "data_root": str(cfg.data_root), "split": cfg.split, "seed": cfg.seed},
                  logger=run_logger(run_dir) if rank == 0 else None)
    if resume is not None and job.logger:
        for name, (was, now) in resume_changes(AdaptConfig, cfg).items():
            job.logger.info("resumed with %s %s (the run had %s)", option_label(name), now, was)
    metrics = run(job, resume)
    _report(run_dir, metrics, rank)
    if rank == 0:
        finish_run(run_dir)  # a compare sub-run is finished even if a later method fails
    return run_dir


def _refuse_finished(run_dir: Path) -> None:
    """A run that finished (its model and metrics written, no INCOMPLETE/FAILED mark) has nothing to resume."""
    if (run_status(run_dir)[0] == "finished" and (run_dir / "model.safetensors").is_file()
            and (run_dir / "metrics.json").is_file()):
        raise SfdaError(f"{run_dir} has finished: nothing to resume; its model is {run_dir / 'model.safetensors'} "
                        "(start a new run for more iterations)")


def _reopen(run_dir: Path) -> None:
    """Continue writing into ``run_dir``: refused while another process writes it; marked INCOMPLETE
    again (its FAILED mark, if any, goes) and its stale temporaries are deleted."""
    if written_by_another_process(run_dir):
        raise SfdaError(f"{run_dir} is being written by another process ({run_dir / INCOMPLETE}): wait for it "
                        "to end, or stop it, before resuming")
    clean_stale_temporaries(run_dir.parent)
    start_run(run_dir)
