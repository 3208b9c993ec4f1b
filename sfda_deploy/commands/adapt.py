"""``train-source`` and ``adapt``: configs → datasets, models, run directory → the loop."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader

from sfda_deploy.adapt import distributed as D
from sfda_deploy.adapt.blackbox import is_onnx
from sfda_deploy.adapt.loop import run
from sfda_deploy.adapt.loop_state import LoopJob, load_resume
from sfda_deploy.adapt.methods import get_method
from sfda_deploy.adapt.recipe import Recipe, check_stages, fit_crops, seed_all
from sfda_deploy.adapt.shipped import run_progression, shipped_kind, shipped_words
from sfda_deploy.checkpoint import load_model
from sfda_deploy.commands.adapt_recipe import assemble
from sfda_deploy.config import AdaptConfig, TrainSourceConfig
from sfda_deploy.config_build import resume_changes, save_config
from sfda_deploy.config_values import option_label
from sfda_deploy.device import select_device
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural, require_options, say
from sfda_deploy.metadata import NORMALIZATIONS, ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.runs import (
    INCOMPLETE,
    clean_stale_temporaries,
    finish_run,
    new_run_dir,
    run_logger,
    run_status,
    start_run,
    write_json,
    written_by_another_process,
)


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
    seed_all(cfg.seed)
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
        save_config(run_dir, cfg, recipe=dataclasses.asdict(mcfg))
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


def _report(run_dir, metrics, rank, method: Optional[str] = None):
    """The run's closing lines: the fallback (or the runner-up) and why, what was tried and what shipped."""
    if rank != 0:
        return
    last = [k for k in metrics if k not in ("before", "selection") and "eval" in metrics[k]]
    selection = metrics.get("selection")
    kind = shipped_kind(selection)
    if kind in ("adabn", "source"):
        what = ("the AdaBN baseline (the source with BatchNorm statistics re-estimated on the target)"
                if kind == "adabn" else "the source model")
        say(f"fallback: shipped {what}: {selection['reason']}")
    elif kind == "runner-up":
        say(f"note: shipped {shipped_words(selection)}: {selection['reason']}")
    if last and method:
        say(f"mIoU {run_progression(method, metrics)}; last iterate {metrics[last[-1]]['eval']['miou']:.1f}")
    elif last:
        before = metrics.get("before", {}).get("miou")
        say(f"mIoU {before if before is not None else '-'} → {metrics[last[-1]]['eval']['miou']} (last iteration)")
    say(f"wrote {run_dir / 'model.safetensors'}")


# ---- adapt ---------------------------------------------------------------------------------
def _selection(spec, sample, split: str, recipe: Recipe, cfg: AdaptConfig, train, device, run_dir: Path,
               rank: int):
    """The run's label-free selection: the fixed sample (loaded on rank 0, which scores) and what a
    fallback ships: the AdaBN baseline or the source checkpoint, or for a black-box source the student
    distilled in stage D (nothing when D is the only stage)."""
    from sfda_deploy.adapt.selection.probe import sample_indices
    from sfda_deploy.adapt.selection.tracker import Selection

    meta, stages, source = recipe.meta, recipe.stages, cfg.source
    picks = sample_indices(len(sample), spec.select_images, spec.seed) if rank == 0 else []
    images = [sample[i]["image"] for i in picks]
    if not is_onnx(source):
        return Selection(spec, images, meta.classes.names, Path(source), None, split,
                         _baseline_maker(spec, recipe, train, device, recipe.method.trains or cfg.propagate))
    if len(stages) > 1:
        return Selection(spec, images, meta.classes.names, run_dir / f"stage_{stages[0].name}.safetensors",
                         stages[0].name, split)
    return Selection(spec, images, meta.classes.names, None, None, split)


def _baseline_maker(spec, recipe: Recipe, train, device, trains: bool):
    """``make_baseline`` of the selection: the AdaBN copy of the source (``methods/adabn.py``), or None
    with ``--baseline source``, for a method that trains nothing (AdaBN itself) and for a model without
    BatchNorm statistics."""
    from sfda_deploy.adapt.batchnorm import batchnorm_layers
    from sfda_deploy.adapt.methods.adabn import adabn_copy

    if spec.baseline != "adabn" or not trains or not batchnorm_layers(recipe.model):
        return None
    return lambda model: adabn_copy(model, train, recipe.meta, device)


def run_adapt(cfg: AdaptConfig, run_dir: Optional[Path] = None) -> Path:
    """Source-free adaptation with ``cfg.method`` (stages ``cfg.stages``); returns the run directory.

    Args:
        run_dir: an existing empty directory to write into instead of a new ``runs/adapt/<name>``
            (``compare``'s per-method sub-runs); ignored when ``cfg.resume`` is set.
    """
    require_options("adapt", {"--source": cfg.source, "--data-root": cfg.data_root},
                    f"sfda-deploy adapt --target {cfg.target} --data-root DATA --source CKPT --method {cfg.method}")
    from sfda_deploy.adapt.selection.settings import check_sample, spec_of

    spec = spec_of(cfg)
    rank, world, local = D.init(cfg.device)
    device = _device(cfg.device, local)
    resume = _resume_state(cfg, spec)
    recipe = assemble(cfg, device)
    if resume is not None and [s.name for s in recipe.stages] != list(resume["stages"]):
        raise SfdaError(f"{cfg.resume} ran stages {','.join(resume['stages'])}: pass the same --stages "
                        "(and --propagate) to resume it")
    train = _train_set(cfg.target, cfg.data_root, cfg.split, recipe.meta.class_set)
    if recipe.method.trains or cfg.propagate:
        recipe = fit_crops(recipe, _frame_size(train), bool(cfg.crop) or "crop" in cfg.options)
    check_stages(recipe, len(train))
    evaluation = _eval_set(cfg.target, cfg.data_root, cfg.eval_split, recipe.meta.class_set)
    sample, split = (evaluation, cfg.eval_split) if evaluation is not None else (train, cfg.split)
    check_sample(len(sample), split)
    seed_all(cfg.seed)
    if device.type == "cuda":
        recipe.model = recipe.model.to(memory_format=torch.channels_last)
    run_dir = _adapt_run_dir(cfg, recipe, run_dir, resume, rank)
    job = LoopJob(method=recipe.method, cfg=recipe.cfg, stages=recipe.stages, student=recipe.model,
                  meta=recipe.meta, train_set=train, run_dir=run_dir, device=device, seed=cfg.seed, amp=cfg.amp,
                  eval_every=cfg.eval_every, **_evaluation(cfg, evaluation, recipe.meta, device, rank),
                  workers=cfg.workers, rank=rank, world=world,
                  selection=_selection(spec, sample, split, recipe, cfg, train, device, run_dir, rank),
                  provenance={"command": "adapt", "source": str(cfg.source), "target": cfg.target,
                              "data_root": str(cfg.data_root), "split": cfg.split, "seed": cfg.seed},
                  logger=run_logger(run_dir) if rank == 0 else None)
    if resume is not None and job.logger:
        for name, (was, now) in resume_changes(AdaptConfig, cfg).items():
            job.logger.info("resumed with %s %s (the run had %s)", option_label(name), now, was)
    metrics = run(job, resume)
    _report(run_dir, metrics, rank, cfg.method)
    if rank == 0:
        finish_run(run_dir)  # a compare sub-run is finished even if a later method fails
    return run_dir


def _resume_state(cfg: AdaptConfig, spec) -> Optional[dict]:
    """``--resume RUN``'s saved state, checked against this invocation (None without ``--resume``)."""
    if not cfg.resume:
        return None
    from sfda_deploy.adapt.selection.settings import check_resume

    _refuse_finished(Path(cfg.resume))
    resume = load_resume(cfg.resume)
    if resume.get("method") != cfg.method:
        raise SfdaError(f"{cfg.resume} is a run of method '{resume.get('method')}', not '{cfg.method}': "
                        f"pass --method {resume.get('method')} or start a new run")
    check_resume(spec, resume, cfg.resume)
    return resume


def _adapt_run_dir(cfg: AdaptConfig, recipe: Recipe, run_dir: Optional[Path], resume: Optional[dict],
                   rank: int) -> Path:
    """The run's directory: the resumed one (reopened), the one given, or a new ``runs/adapt/<name>``
    whose ``config.yaml`` records the flags, the method's config and each borrowed stage's own."""
    if resume is not None:
        run_dir = Path(cfg.resume)
        if rank == 0:
            _reopen(run_dir)
        return run_dir
    if run_dir is None:
        run_dir = _run_dir("adapt", cfg.name or cfg.method, rank)
    if rank == 0:
        save_config(run_dir, cfg, recipe=dataclasses.asdict(recipe.cfg),
                    stage_recipes={s.name: dataclasses.asdict(s.cfg) for s in recipe.stages if s.cfg is not None})
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
