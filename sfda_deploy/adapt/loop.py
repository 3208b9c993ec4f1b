"""THE training loop of every recipe (supervised source training and all SFDA methods).

Contract between the loop and a method (``sfda_deploy/adapt/methods/<name>.py``)
--------------------------------------------------------------------------------
A method module defines

* ``@dataclass(frozen=True) class <Name>Config(LoopConfig)``: the spec's defaults, including the
  loop-level ones inherited from ``methods.base.LoopConfig`` (iterations per stage, batch, crop, lr,
  optimizer, betas/momentum, weight decay, warm-up, head lr multiplier, EMA α_max, teacher BN mode,
  checkpoint/preview period). ``--set key=value`` overrides any field (unknown key → SfdaError
  naming the valid ones); ``--iters/--batch/--crop/--lr`` override the matching fields.
* ``METHOD = Method(name, <Name>Config, stages=(Stage(...), ...))`` registered in
  ``methods/__init__.py``.

A ``Stage`` (``methods/base.py``) is a name plus pure functions:

* ``prepare(ctx: PrepareContext) -> dict`` (optional): a pass over the target data before the stage
  (ATP P's entropy ranking, LDBE's class thresholds). Its result becomes ``state.store``; named
  index subsets in ``store["streams"]`` feed the stage's ``streams``.
* ``rounds(cfg)`` + ``round_start(ctx, store, r)`` (optional): self-training rounds inside one stage
  (LDBE, PR-SFDA's phases, HIAST): ``cfg.iters`` is split into R rounds; at each round start the
  loop freezes a copy of the student (or EMA teacher) into ``state.frozen`` (the round's
  pseudo-label model, checkpointed) and calls ``round_start`` with it; ``store["lr_scale"]``
  rescales the learning rate. ``Method.make_config`` rejects a budget smaller than R.
* ``step(batch, student, teacher, state, cfg) -> {loss name: scalar tensor}``:

  - ``batch`` maps each stream name (``"target"`` by default) to a collated batch dict:
    ``image`` float 0-255 RGB ``[B,3,h,w]`` on the device (random crop ``cfg.crop`` + flip = the
    weak view; the step normalises with ``state.normalize`` and makes strong views with
    ``sfda_deploy.adapt.augment``), ``index`` ``[B]``, ``name``; ``label`` ``[B,h,w]`` only if the
    stage declares ``labels=True`` (supervised recipes; source-free methods never see labels).
  - ``student`` is in train mode; ``teacher`` is the EMA teacher (or None if ``teacher=False``),
    already updated for this iteration (α_t = min(1 − 1/(t+1), α_max), DACS order: update, then
    pseudo-label); call it under ``torch.no_grad()``.
  - ``state`` (``StageState``): ``iteration``, ``iters``, ``generator`` (seeded, checkpointed),
    ``store`` (method state, checkpointed), ``extras``/``teacher_extras`` (trainable add-ons such
    as a projection head and their EMA copies), ``want_preview``/``previews``.
  - The loop sums the returned losses, logs each, back-propagates once and steps the optimiser.
    A recipe with several backward passes summed before one optimiser step (ATP P: three) returns
    the corresponding losses: the gradient of a sum is the sum of the gradients, so one backward
    of Σ losses is the same update as separate backward passes accumulated. Return a
    ``torch.zeros(())``-valued loss (or leave it out) when a term is inactive.

What the loop does (plain functions, no method owns a loop)
-----------------------------------------------------------
Iteration-based stages; AdamW or SGD (``cfg.optimizer``) with head parameters
(``model.is_head_parameter`` + extras) at ``lr·head_lr_mult``; poly schedule with linear warm-up
(``optim.lr_factor``); EMA teacher re-initialised from the student at each stage start
(``teacher.py``); AMP (bf16, or fp16 with a grad scaler where the GPU lacks native bf16: ``amp.py``)
and channels_last on CUDA only; a non-finite total loss stops the run with an SfdaError and keeps the last good
checkpoint; resumable checkpoints (``last.pt``: model, teacher, extras, optimiser, scaler, RNG
states, generator, iteration, stage, method state, loss history) every ``cfg.checkpoint_every``
iterations and at each stage end (+ ``stage_<name>.safetensors``), written atomically and loaded
with ``weights_only=True``; batches, and every draw from the process RNGs inside an iteration
(``Dropout2d``), are a pure function of (seed, stage, iteration) (``sampling.py``), and the method's
draws come from the checkpointed ``state.generator``, so ``--resume`` reaches the same weights and
losses as an uninterrupted run; torch.distributed data parallelism
(``distributed.py``); a progress bar (``sfda_deploy.progress``: tqdm, or lines in a pipe); evaluation
every ``eval_every`` iterations and at each stage end when the evaluation set has labels; plots and
previews through ``plots.py``. With ``job.selection`` (``selection/tracker.py``) the student is scored without
labels at its points and each stage end, and what ships in ``model.safetensors`` is the selected
checkpoint or, on fallback, the AdaBN baseline or the source.

The job, a stage's state and the resumable checkpoint are ``loop_state.py``; the iterations are here.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch

from sfda_deploy.adapt import amp, plots
from sfda_deploy.adapt import distributed as D
from sfda_deploy.adapt.batchnorm import train_mode
from sfda_deploy.adapt.loop_state import (
    CHECKPOINT,
    LoopJob,
    StageRun,
    autocast,
    final_meta,
    save_resume,
    set_rng_state,
    setup_stage,
    stage_cfg,
    start_round,
    stream_subsets,
)
from sfda_deploy.adapt.methods.base import Stage, round_bounds, round_of
from sfda_deploy.adapt.optim import lr_factor, schedule_position, set_lr
from sfda_deploy.adapt.sampling import seed_iteration, stream_loader
from sfda_deploy.adapt.shipped import shipped_words
from sfda_deploy.adapt.teacher import ema_update
from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.errors import SfdaError
from sfda_deploy.metrics import absent_classes
from sfda_deploy.progress import progress
from sfda_deploy.runs import write_json


def _to_device(batch: dict, device, channels_last: bool) -> dict:
    out = dict(batch)
    img = batch["image"].to(device, non_blocking=True).float()
    out["image"] = img.contiguous(memory_format=torch.channels_last) if channels_last else img
    if "label" in batch:
        out["label"] = batch["label"].to(device, non_blocking=True)
    index = batch.get("index")
    out["index"] = index.to(device, non_blocking=True) if torch.is_tensor(index) else index
    return out


def _loaders(job: LoopJob, stage: Stage, stage_index: int, start: int, cfg: Any, store: dict) -> dict:
    """One batch iterator per stream of the stage, from iteration ``start`` to the stage's end."""
    subsets = stream_subsets(stage, store, len(job.train_set))
    return {s: iter(stream_loader(job.train_set, sub, start=start, stop=cfg.iters, batch=cfg.batch, crop=cfg.crop,
                                  flip=cfg.flip, seed=job.seed * 1000 + stage_index, stream=s,
                                  keep_labels=stage.labels, workers=job.workers, rank=job.rank, world=job.world,
                                  pin_memory=job.device.type == "cuda"))
            for s, sub in subsets.items()}


def _schedule(job: LoopJob, stage: Stage, st: StageRun, cfg: Any, t: int) -> None:
    """Before iteration ``t``: a new round where one starts, the learning rate, the EMA teacher's update."""
    round_begin = 0
    if stage.rounds is not None:
        r = round_of(t, cfg.iters, stage.rounds(cfg))
        round_begin = round_bounds(cfg.iters, stage.rounds(cfg))[r]
        if st.state.store.get("round") != r:
            start_round(job, stage, st, r)
            if cfg.round_fresh_optimizer:
                st.optimizer.state.clear()
    step_t, horizon = schedule_position(t, cfg.iters, round_begin, cfg.poly_horizon)
    set_lr(st.optimizer, lr_factor(step_t, horizon, cfg.warmup_iters, cfg.warmup_ratio, cfg.poly_power)
           * st.state.store.get("lr_scale", 1.0))
    if st.teacher is not None:
        ema_update(st.teacher, job.student, t, cfg.ema_alpha, cfg.teacher_buffers, cfg.ema_ramp)
        for k, m in st.state.teacher_extras.items():
            ema_update(m, st.state.extras[k], t, cfg.ema_alpha, cfg.teacher_buffers, cfg.ema_ramp)


def _train_step(job: LoopJob, stage: Stage, st: StageRun, cfg: Any, batch: dict, params: list, t: int) -> dict:
    """The method's losses on ``batch``, one backward of their sum and an optimiser step → ``{loss: value}``.

    Raises:
        SfdaError: a non-finite total loss (nothing is stepped; the last checkpoint stays).
    """
    with autocast(job):
        losses = stage.step(batch, job.student, st.teacher, st.state, cfg)
    total = sum(v.float() for v in losses.values())
    values, nonfinite = D.losses_to_host(losses, total)
    if nonfinite:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise SfdaError(f"loss became non-finite at iteration {t} of stage {stage.name} ({shown}): lower "
                        f"--lr or disable --amp; the last good checkpoint is kept in {job.run_dir}/"
                        f"{CHECKPOINT} (continue with --resume)")
    amp.apply_gradients(total, st.optimizer, st.scaler, params)
    D.broadcast_buffers(job.student)
    return values


def _after_step(job: LoopJob, stage: Stage, stage_index: int, st: StageRun, cfg: Any, done: int,
                history: list, metrics: dict) -> float:
    """Iteration ``done`` finished: preview, evaluation, selection point, checkpoint when due → seconds
    spent scoring for the selection (left out of the training speed)."""
    if job.rank == 0 and st.state.want_preview and st.state.previews:
        plots.save_preview(job.run_dir / "previews" / f"{stage.name}_{done - 1:06d}.png", st.state.previews,
                            job.meta, f"stage {stage.name}, iteration {done} of {cfg.iters}")
    evaluated, scoring = None, 0.0
    if job.eval_fn is not None and job.eval_every and done % job.eval_every == 0 and done < cfg.iters:
        evaluated = _evaluate(job)
        metrics.setdefault(stage.name, {}).setdefault("evals", []).append({"iter": done, **evaluated})
        train_mode(job.student, cfg.student_bn)
    if job.selection is not None and job.selection.due(stage.name, done, cfg.iters):
        scoring = _select_point(job, stage.name, done, evaluated)
        train_mode(job.student, cfg.student_bn)
    if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.iters:
        save_resume(job, stage_index, done, st, history, metrics)
    return scoring


def run_stage(job: LoopJob, stage_index: int, start: int, st: StageRun, history: list, metrics: dict) -> None:
    """Iterations ``start … cfg.iters − 1`` of one stage (its state in ``st``, updated in place)."""
    stage, student = job.stages[stage_index], job.student
    cfg, state = stage_cfg(job, stage), st.state
    params = [p for p in student.parameters() if p.requires_grad]
    params += [p for m in state.extras.values() for p in m.parameters() if p.requires_grad]
    channels_last = job.device.type == "cuda"
    loaders = _loaders(job, stage, stage_index, start, cfg, state.store)
    bar = progress(total=cfg.iters, initial=start, desc=f"{job.method.name} {stage.name}", leave=True,
                   disable=not job.progress or job.rank != 0 or cfg.iters == 0)  # AdaBN: its own pass's bar
    train_mode(student, cfg.student_bn)
    D.sync_module_states(student, *state.extras.values())
    t0, scoring = time.perf_counter(), 0.0  # training speed leaves the selection's scoring time out
    for t in range(start, cfg.iters):
        seed_iteration(job.seed, stage_index, t, job.rank)  # model-side draws (Dropout) owned by the iteration
        batch = {s: _to_device(next(it), job.device, channels_last) for s, it in loaders.items()}
        state.iteration = t
        state.want_preview = bool(cfg.preview_every) and job.rank == 0 and (
            t % cfg.preview_every == 0 or t == cfg.iters - 1)  # and the stage's last iteration: its final model
        state.previews = {}
        _schedule(job, stage, st, cfg, t)
        try:
            values = _train_step(job, stage, st, cfg, batch, params, t)
        except SfdaError:
            bar.close()
            raise
        history.append({"stage": stage.name, "iter": t, **values})
        bar.update(1)
        bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
        scoring += _after_step(job, stage, stage_index, st, cfg, t + 1, history, metrics)
    bar.close()
    seconds = time.perf_counter() - t0 - scoring
    metrics.setdefault(stage.name, {}).update({
        "iters": cfg.iters, "seconds_this_session": round(seconds, 2),
        "it_per_s": round((cfg.iters - start) / seconds, 3) if seconds > 0 else None})


def _evaluate(job: LoopJob, seen: Optional[dict] = None) -> dict:
    """Score the student (rank 0); ``seen["absent"]`` gets the classes without labelled pixels (for the plot)."""
    result = job.eval_fn(job.student) if job.rank == 0 else {}
    D.barrier()
    if job.logger and result:
        job.logger.info("eval mIoU %.2f", result["miou"])
    if seen is not None and result:
        seen["absent"] = absent_classes(result, job.meta.classes.names)
    return {k: v for k, v in result.items() if k not in ("confusion", "unassigned")}


def _select_point(job: LoopJob, stage: str, iteration: int, evaluated: Optional[dict]) -> float:
    """A scoring point of the selection, with the mIoU at the same point where labels exist; its seconds."""
    t0 = time.perf_counter()
    if evaluated is None and job.eval_fn is not None:
        evaluated = _evaluate(job)
    job.selection.observe(job, stage, iteration, evaluated)
    return time.perf_counter() - t0


def run(job: LoopJob, resume: Optional[dict] = None) -> dict:
    """Run ``job.stages`` (continuing from a ``load_resume`` state) and write the run outputs.

    Returns:
        the metrics dict written to ``metrics.json`` (per stage: iters, it/s, evaluations).
    """
    history = list(resume["history"]) if resume else []
    metrics = dict(resume["metrics"]) if resume else {}
    first, start = (resume["stage_index"], resume["iteration"]) if resume else (0, 0)
    if resume:
        job.student.load_state_dict(resume["model"])
        set_rng_state(resume["rng"], job.device)
    elif job.eval_fn is not None:
        metrics["before"] = _evaluate(job)
    if job.selection is not None:
        job.selection.begin(job, resume, metrics.get("before"))
    seen: dict = {}
    for i in range(first, len(job.stages)):
        stage = job.stages[i]
        if job.logger:
            job.logger.info("stage %s: %d iterations from %d", stage.name, stage_cfg(job, stage).iters, start)
        if start == 0 and job.selection is not None:
            job.selection.stage_begins(job)
        st = setup_stage(job, stage, i, resume if (resume and i == first) else None)
        if start == 0 and job.rank == 0:  # a stage's prepare result is part of what resume restores
            save_resume(job, i, 0, st, history, metrics)
        run_stage(job, i, start, st, history, metrics)
        if job.eval_fn is not None:
            metrics[stage.name]["eval"] = _evaluate(job, seen)
        if job.selection is not None:
            _select_point(job, stage.name, stage_cfg(job, stage).iters, metrics[stage.name].get("eval"))
        if job.rank == 0:
            save_checkpoint(job.run_dir / f"stage_{stage.name}.safetensors", job.student,
                            final_meta(job, job.stages[: i + 1]))
        handed_on = job.selection.stage_ends(job, stage.name) if job.selection is not None else None
        if handed_on is not None:  # --stage-keep best: "start" when the stage's end scored lower than its start
            metrics[stage.name]["handed_on"] = handed_on
        if job.rank == 0:
            save_resume(job, i + 1, 0, None, history, metrics)
            write_json(job.run_dir / "metrics.json", metrics)
        start = 0
    if job.selection is not None:
        metrics["selection"] = job.selection.finish(job)
        shipped = metrics["selection"]["shipped"]
        job.provenance = {**job.provenance, "selected": {k: shipped.get(k) for k in ("stage", "iter")}
                          | {k: metrics["selection"][k] for k in ("select_by", "fell_back")}}
    if job.rank == 0:
        save_checkpoint(job.run_dir / "model.safetensors", job.student, final_meta(job, job.stages))
        write_json(job.run_dir / "metrics.json", metrics)
        if job.selection is not None:
            job.selection.cleanup(job)
            plots.plot_selection(job.run_dir / "selection.png", metrics["selection"])
        _plots(job, history, metrics, seen.get("absent"))
    D.barrier()
    return metrics


def _plots(job: LoopJob, history: list, metrics: dict, absent: Optional[list]) -> None:
    """``losses.png`` (a panel per stage, with the stage's mIoU change) and ``iou_before_after.png``."""
    names = [s.name for s in job.stages]
    mious = [metrics.get("before", {}).get("miou")] + [metrics.get(n, {}).get("eval", {}).get("miou") for n in names]
    plots.plot_losses(job.run_dir / "losses.png", history, {s.name: s.description for s in job.stages},
                       {n: (mious[i], mious[i + 1]) for i, n in enumerate(names)})
    last = names[-1] if names else None
    shipped = (metrics.get("selection") or {}).get("shipped", {})
    after = shipped.get("eval") or metrics.get(last, {}).get("eval")
    if "before" in metrics and after:
        source = Path(str(job.provenance.get("source") or "the source model")).name
        what = shipped_words(metrics.get("selection"))
        title = f"{source} before vs after {job.method.name} ({','.join(names)})\nshipped: {what}"
        title += f"\non {job.eval_name}" if job.eval_name else ""
        plots.plot_iou_chart(job.run_dir / "iou_before_after.png", metrics["before"], after, title, absent,
                              after_label=f"after: {what}")

