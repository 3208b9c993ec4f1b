"""What a run of the loop holds and saves: the job (``LoopJob``), one stage's state (``StageRun``, built by
``setup_stage``), the resumable checkpoint ``last.pt`` (``save_resume`` / ``load_resume``: weights,
optimiser, RNG states, the method's store; loaded with ``weights_only=True``) and a stage's rounds
(``start_round``). The iterations themselves are ``sfda_deploy.adapt.loop``.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from sfda_deploy.adapt import amp
from sfda_deploy.adapt.batchnorm import reestimate_batchnorm, train_mode
from sfda_deploy.adapt.methods.base import Method, PrepareContext, Stage, StageState
from sfda_deploy.adapt.optim import build_optimizer
from sfda_deploy.adapt.teacher import make_teacher
from sfda_deploy.disk import write_all
from sfda_deploy.errors import SfdaError
from sfda_deploy.runs import atomic_path

CHECKPOINT = "last.pt"


@dataclass
class LoopJob:
    """Inputs of one run of the loop.

    Attributes:
        method / cfg / stages: the recipe, its config and the stages to run (in order).
        student / meta: the model (on ``device``) and its metadata.
        train_set: target (or source, for train-source) training dataset.
        eval_set: labelled evaluation dataset or None.
        run_dir: output directory (rank 0; None on other ranks).
        provenance: what the final model's metadata records besides stages/iterations.
        eval_fn: ``eval_fn(model) -> result dict``, or None. Give it on EVERY rank (or on none): the
            evaluations are collective points (a barrier), and only rank 0 calls it.
        selection: a ``selection.tracker.Selection`` (label-free checkpoint selection and fallback), or None to
            ship the last iterate. Give it on every rank (or on none), like ``eval_fn``.
    """

    method: Method
    cfg: Any
    stages: tuple[Stage, ...]
    student: torch.nn.Module
    meta: Any
    train_set: Any
    run_dir: Optional[Path]
    device: torch.device
    seed: int = 0
    amp: bool = True
    eval_every: int = 0
    eval_fn: Optional[Callable[[torch.nn.Module], dict]] = None
    eval_name: str = ""  # what the evaluation scores, for the plots (e.g. "cityscapes val of DATA, 30 images")
    workers: int = 0
    progress: bool = True
    provenance: dict = field(default_factory=dict)
    rank: int = 0
    world: int = 1
    logger: Any = None
    selection: Any = None


@dataclass
class StageRun:
    """What the iterations of one stage share: built by ``_setup_stage``, checkpointed by ``_save_resume``.

    Attributes:
        state: the method-facing ``StageState`` (store, generator, extras, the round's frozen model).
        teacher: the EMA teacher, or None for a stage without one.
        optimizer / scaler: the optimiser of the student (and extras) and AMP's gradient scaler.
    """

    state: StageState
    teacher: Optional[torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scaler: Any


def rng_state(device) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
             "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def load_resume(run_dir: Path | str) -> dict:
    """The ``last.pt`` state of an adapt/train-source run directory (weights only, no code)."""
    path = Path(run_dir) / CHECKPOINT
    if not Path(run_dir).is_dir() or not path.is_file():
        raise SfdaError(f"{run_dir} is not a resumable run (no {CHECKPOINT}): pass a runs/adapt/<name> "
                        "directory written by sfda-deploy adapt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise SfdaError(f"{path} is unreadable ({type(e).__name__}): start a new run instead") from None


def save_resume(job: LoopJob, stage_index: int, iteration: int, st: Optional[StageRun], history: list,
                 metrics: dict) -> None:
    if job.rank != 0:
        return
    state = {
        "method": job.method.name, "stages": [s.name for s in job.stages],
        "stage_index": stage_index, "iteration": iteration,
        "model": job.student.state_dict(), "history": history, "metrics": metrics,
        "rng": rng_state(job.device),
        "selection": job.selection.state() if job.selection is not None else None,
    }
    if st is not None:  # inside a stage (None: between stages)
        state.update({
            "teacher": st.teacher.state_dict() if st.teacher is not None else None,
            "extras": {k: m.state_dict() for k, m in st.state.extras.items()},
            "teacher_extras": {k: m.state_dict() for k, m in st.state.teacher_extras.items()},
            "optimizer": st.optimizer.state_dict(), "scaler": st.scaler.state_dict(),
            "store": st.state.store, "generator": st.state.generator.get_state(),
            "frozen": st.state.frozen.state_dict() if st.state.frozen is not None else None,
        })
    buffer = io.BytesIO()  # torch.save reports a full disk as a RuntimeError; write_all as one that says so
    torch.save(state, buffer)
    with atomic_path(job.run_dir / CHECKPOINT) as tmp:
        write_all(tmp, buffer.getbuffer())


def stage_cfg(job: LoopJob, stage: Stage) -> Any:
    """The config a stage runs with: its own (a borrowed stage) or the method's."""
    return stage.cfg if stage.cfg is not None else job.cfg


def autocast(job: LoopJob):
    return amp.autocast(job.device, job.amp)


def setup_stage(job: LoopJob, stage: Stage, stage_index: int, resume: Optional[dict]) -> StageRun:
    cfg, student = stage_cfg(job, stage), job.student
    if cfg.student_bn == "adabn" and (resume is None or resume.get("optimizer") is None):
        restat_student(job)  # a stage that starts (a resume inside it has the statistics in its weights)
    if resume is not None and resume.get("store") is not None:
        store = resume["store"]
    elif stage.prepare is not None:
        student.eval()
        with autocast(job):
            store = stage.prepare(PrepareContext(student, job.meta, job.train_set, job.device, cfg,
                                                 job.progress and job.rank == 0))
    else:
        store = {}
    extras = {k: m.to(job.device) for k, m in (stage.extras(student, cfg) if stage.extras else {}).items()}
    teacher = make_teacher(student, cfg.teacher_bn) if stage.teacher else None
    teacher_extras = {k: make_teacher(m, cfg.teacher_bn) for k, m in extras.items()} if stage.teacher else {}
    gen = torch.Generator(device=job.device).manual_seed(job.seed * 1000 + stage_index)
    state = StageState(job.meta, 0, cfg.iters, gen, store, extras, teacher_extras, rank=job.rank, world=job.world)
    optimizer = build_optimizer(student, extras, cfg)
    scaler = amp.make_scaler(job.device, job.amp)
    if resume is not None and resume.get("optimizer") is not None:
        if teacher is not None:
            teacher.load_state_dict(resume["teacher"])
        for k, m in extras.items():
            m.load_state_dict(resume["extras"][k])
        for k, m in teacher_extras.items():
            m.load_state_dict(resume["teacher_extras"][k])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        gen.set_state(resume["generator"])
        if resume.get("frozen") is not None:
            state.frozen = make_teacher(student, "eval")
            state.frozen.load_state_dict(resume["frozen"])
        # the checkpoint was written after this stage's set-up, whose modules (heads) were just built again
        # from the global RNG before their saved weights were loaded: rewind it to the saved point
        set_rng_state(resume["rng"], job.device)
    return StageRun(state, teacher, optimizer, scaler)


def restat_student(job: LoopJob) -> None:
    """The student's BatchNorm statistics re-estimated on the whole target training images (the AdaBN pass,
    ``methods/adabn.py``), on rank 0, then sent to every rank."""
    from sfda_deploy.adapt import distributed as D
    from sfda_deploy.adapt.methods.adabn import target_inputs

    if job.rank == 0:
        reestimate_batchnorm(job.student, target_inputs(job.train_set, job.meta, job.device, job.progress))
    D.sync_module_states(job.student)


def stream_subsets(stage: Stage, store: dict, n: int) -> dict:
    subsets = {}
    for s in stage.streams:
        subsets[s] = list(range(n)) if s == "target" else list(store.get("streams", {}).get(s, []))
        if not subsets[s]:
            raise SfdaError(f"stage {stage.name} has no images in its '{s}' stream: the target set is too "
                            "small for this split; add images or change the split ratio with --set")
    return subsets


def start_round(job: LoopJob, stage: Stage, st: StageRun, r: int) -> None:
    """Snapshot the round's pseudo-label network into ``state.frozen`` and run ``stage.round_start``."""
    state, teacher = st.state, st.teacher
    source = teacher if stage.snapshot == "teacher" and teacher is not None and r > 0 else job.student
    state.frozen = make_teacher(source, "eval")
    store = state.store
    if stage.round_start is not None:
        job.student.eval()
        with torch.no_grad(), autocast(job):
            store = stage.round_start(PrepareContext(state.frozen, job.meta, job.train_set, job.device,
                                                     stage_cfg(job, stage), job.progress and job.rank == 0), store, r)
        train_mode(job.student, stage_cfg(job, stage).student_bn)
    store["round"] = r
    state.store = store


def final_meta(job: LoopJob, stages) -> Any:
    """The metadata a checkpoint of ``stages`` carries: provenance with each stage's own iterations
    (a borrowed stage, e.g. ``--propagate``'s P, runs its own config); ``iterations_per_stage`` when
    every stage ran the same number."""
    iterations = {s.name: stage_cfg(job, s).iters for s in stages}
    same = set(iterations.values())
    return job.meta.with_provenance(**job.provenance, method=job.method.name, stages=[s.name for s in stages],
                                    iterations=iterations,
                                    iterations_per_stage=same.pop() if len(same) == 1 else None)
