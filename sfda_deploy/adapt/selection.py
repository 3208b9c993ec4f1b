"""Checkpoint selection inside the loop: score the student on a fixed unlabelled target sample at chosen
iterations, keep the best checkpoint on disk, and at the end ship it, or the training-free AdaBN baseline, or
the source (``validation.decide``).

The loop calls, through ``LoopJob.selection`` (rank 0 computes, every rank reaches the barriers):

* ``begin(job, resume, before)`` once: restores the state saved in ``last.pt``, or scores the source and
  builds, scores and saves the AdaBN baseline (``select/baseline.safetensors``);
* ``due(stage, done, iters)`` / ``observe(job, stage, iteration, eval_result)`` at the scoring points
  (every ``every`` iterations and each stage end);
* ``state()`` when it writes ``last.pt`` (the best-so-far survives ``--resume``);
* ``finish(job)`` after the last stage: decides, loads the shipped weights into the student on every
  rank and returns the ``metrics.json`` record; ``cleanup(job)`` after ``model.safetensors`` is written.

Files: the best checkpoint so far is ``select/<stage>_<iteration>.safetensors`` (atomic writes); the one
the last ``last.pt`` refers to is kept until a newer state is saved, so a crash never leaves a resumable
state pointing at a deleted file.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from sfda_deploy.adapt import distributed as D
from sfda_deploy.adapt.scoring import score_model
from sfda_deploy.adapt.validation import CRITERIA, collapse, decide, floor_candidates, marginal_kl
from sfda_deploy.classes import suggest
from sfda_deploy.errors import SfdaError

MIN_IMAGES = 2        # the mix probe pairs images, SND needs two samples
POINTS_PER_STAGE = 4  # the default scoring period: a quarter of each stage ...
MIN_PERIOD = 50       # ... but no more often than every 50 iterations (short runs: stage ends only)
SELECT_DIR = "select"
BASELINE_FILE = "baseline.safetensors"


@dataclass(frozen=True)
class SelectionSpec:
    """How a run selects what it ships.

    Attributes:
        criterion: the score that picks (``validation.CRITERIA``); all are recorded.
        every: iterations between scoring points inside a stage; None: ``POINTS_PER_STAGE`` points per
            stage, at least ``MIN_PERIOD`` iterations apart; 0: stage ends only. Each stage end is always
            scored.
        images: size of the fixed target sample (seeded).
        snd_pixels: pixels subsampled (seeded, fixed) from the sample for SND.
        margin: relative margin the shipped point must beat the fallback's score by.
        fallback: ship the baseline or the source (or a point that keeps the floor) when the selection
            fails; False ships the criterion's top point.
        guard: the criterion the chosen point must beat the fallback on (``--fallback-by``); None: ``criterion``.
        baseline: ``adabn``: the source with BatchNorm statistics re-estimated on the target is scored
            before training, is the fallback when it beats the source, and sets the floor; ``source``:
            the source alone (the rule before the AdaBN baseline).
        floor / tolerance: criteria a checkpoint must keep within ``tolerance`` of the baseline's to be
            shipped (``validation.keeps_floor``); ignored without a baseline.
        sticky: once a checkpoint falls below the floor, no later one is a candidate
            (``validation.floor_candidates``).
        seed: draws the sample and the SND pixels.
    """

    criterion: str = "im"
    every: Optional[int] = None
    images: int = 16
    snd_pixels: int = 1024
    margin: float = 0.01
    fallback: bool = True
    guard: Optional[str] = "im"
    baseline: str = "adabn"
    floor: tuple[str, ...] = ("snd",)
    tolerance: float = 0.03
    sticky: bool = True
    seed: int = 0


def spec_of(cfg) -> SelectionSpec:
    """The selection settings of an ``AdaptConfig`` or ``CompareConfig``, checked (``check_spec``)."""
    spec = SelectionSpec(criterion=cfg.select_by, every=cfg.select_every, images=cfg.select_images,
                         margin=cfg.fallback_margin, fallback=cfg.fallback, guard=cfg.fallback_by,
                         baseline=cfg.baseline, floor=parse_floor(cfg.floor_by), tolerance=cfg.floor_tolerance,
                         sticky=cfg.floor_sticky, seed=cfg.seed)
    check_spec(spec)
    return spec


BASELINES = ("adabn", "source")


def parse_floor(text: Optional[str]) -> tuple[str, ...]:
    """``--floor-by``: criteria separated by commas; ``none`` (or nothing): no floor."""
    if text is None or str(text).strip().lower() in ("", "none"):
        return ()
    return tuple(c.strip() for c in str(text).split(",") if c.strip())


def check_spec(spec: SelectionSpec) -> None:
    """Flag errors, raised before any run directory exists."""
    if spec.criterion not in CRITERIA:
        raise SfdaError(f"unknown --select-by '{spec.criterion}'{suggest(spec.criterion, CRITERIA)}: "
                        f"choose one of {', '.join(CRITERIA)}")
    if spec.guard is not None and spec.guard not in CRITERIA:
        raise SfdaError(f"unknown --fallback-by '{spec.guard}'{suggest(spec.guard, CRITERIA)}: "
                        f"choose one of {', '.join(CRITERIA)}")
    for c in spec.floor:
        if c not in CRITERIA:
            raise SfdaError(f"unknown --floor-by '{c}'{suggest(c, CRITERIA)}: choose from {', '.join(CRITERIA)} "
                            "(comma-separated), or none")
    if spec.baseline not in BASELINES:
        raise SfdaError(f"unknown --baseline '{spec.baseline}'{suggest(spec.baseline, BASELINES)}: choose adabn "
                        "(the source with BatchNorm statistics re-estimated on the target) or source")
    if not 0 <= spec.tolerance < 1:
        raise SfdaError(f"--floor-tolerance {spec.tolerance} must be in [0, 1) (a share of the baseline's score, "
                        "e.g. 0.03)")
    if spec.every is not None and spec.every < 0:
        raise SfdaError(f"--select-every {spec.every} is negative: pass N > 0 to score every N iterations, "
                        "0 to score at stage ends only, or leave it out for 4 points per stage")
    if spec.images < MIN_IMAGES:
        raise SfdaError(f"--select-images {spec.images} is too few to score a model: pass at least {MIN_IMAGES}")
    if not spec.margin >= 0:
        raise SfdaError(f"--fallback-margin {spec.margin} must be >= 0 (a share of the source's score, e.g. 0.01)")


def settings_of(spec: SelectionSpec) -> dict:
    """The settings a resumed run must keep: what the saved points were scored on and picked by."""
    return {"select_by": spec.criterion, "select_images": spec.images, "fallback": spec.fallback, "seed": spec.seed,
            "baseline": spec.baseline, "floor_by": ",".join(spec.floor) or "none", "floor_tolerance": spec.tolerance,
            "floor_sticky": spec.sticky}


def check_resume(spec: SelectionSpec, resume: dict, run: str) -> None:
    """A resumed run scores like the interrupted one (its points and best-so-far stay comparable)."""
    saved = (resume.get("selection") or {}).get("settings")
    if not saved:
        return
    older = {"baseline": "source", "floor_by": "none", "floor_tolerance": spec.tolerance, "floor_sticky": False}
    saved = older | saved  # runs from before these settings
    now = settings_of(spec)
    changed = [k for k in saved if saved[k] != now.get(k)]
    if changed:
        shown = ", ".join(_flag(k, saved[k]) for k in changed)
        raise SfdaError(f"{run} selected checkpoints with {shown}: pass the same to resume it")


def _flag(key: str, value) -> str:
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{key.replace('_', '-')}"
    return f"--{key.replace('_', '-')} {value}"


def check_sample(available: int, split: str) -> None:
    """The target sample must hold ``MIN_IMAGES`` images."""
    if available < MIN_IMAGES:
        raise SfdaError(f"the target's {split} split has {available} image(s), too few to score checkpoints "
                        f"without labels: at least {MIN_IMAGES} are needed; add target images")


def is_due(done: int, iters: int, every: Optional[int]) -> bool:
    """A scoring point inside a stage after ``done`` of ``iters`` iterations (the stage end is scored apart)."""
    if done >= iters or every == 0:
        return False
    period = every if every is not None else max(MIN_PERIOD, math.ceil(iters / POINTS_PER_STAGE))
    return done % period == 0


def _brief(point: Optional[dict]) -> Optional[dict]:
    return None if point is None else {k: point.get(k) for k in ("stage", "iter", "scores", "miou", "collapse")}


class Selection:
    """The selection state of one run (see the module docstring for the loop's calls).

    Args:
        spec: the settings.
        images: the fixed sample (rank 0; other ranks may pass ``[]``).
        names: class names (collapse messages).
        reference_path: the checkpoint shipped on fallback (the source; a stage file for a black-box
            source), or None when there is nothing to fall back to.
        reference_stage: None (the source is scored before training) or the stage whose end is the
            reference (``D``, the student distilled from a black-box source).
        split: where the sample comes from (recorded).
        make_baseline: ``make_baseline(source_model) -> model``, the AdaBN baseline (a new model; rank 0
            calls it once, before training), or None for no baseline (``--baseline source``, a method that
            trains nothing, a model without BatchNorm, a black-box source).
    """

    def __init__(self, spec: SelectionSpec, images: Sequence[torch.Tensor], names: Sequence[str],
                 reference_path: Optional[Path] = None, reference_stage: Optional[str] = None, split: str = "",
                 make_baseline: Optional[Callable] = None):
        self.spec, self.images, self.names, self.split = spec, list(images), list(names), split
        self.reference_path, self.reference_stage = reference_path, reference_stage
        self.make_baseline = make_baseline
        self.points: list[dict] = []
        self.reference: Optional[dict] = None
        self.baseline: Optional[dict] = None
        self.best: Optional[dict] = None
        self._persisted: Optional[str] = None

    # ---- the loop's calls ------------------------------------------------------------------
    def begin(self, job, resume: Optional[dict], before: Optional[dict]) -> None:
        """Restore the state of ``last.pt``, or score the source model (the student before training)."""
        saved = (resume or {}).get("selection")
        if saved:
            self.points, self.reference, self.best = saved["points"], saved["reference"], saved["best"]
            self.baseline = saved.get("baseline")
            self._persisted = self.best["file"] if self.best else None
        elif resume is None and self.reference_stage is None and self.reference_path is not None and job.rank == 0:
            self.reference = self._score(job, "source", 0, before, reference=True)
            if self.make_baseline is not None:
                self._build_baseline(job)
        D.barrier()

    def due(self, stage: str, done: int, iters: int) -> bool:
        return stage != self.reference_stage and is_due(done, iters, self.spec.every)

    def observe(self, job, stage: str, iteration: int, result: Optional[dict]) -> None:
        """Score the student now (``result``: its evaluation at this point, where labels exist)."""
        if job.rank == 0:
            if stage == self.reference_stage:
                self.reference = self._score(job, stage, iteration, result, reference=True)
            else:
                point = self._score(job, stage, iteration, result)
                self.points.append(point)
                if self._better(point):
                    self._keep(job, point, result)
        D.barrier()

    def state(self) -> dict:
        """The resumable state (plain data, ``weights_only``-loadable)."""
        self._persisted = self.best["file"] if self.best else None
        return {"points": self.points, "reference": self.reference, "baseline": self.baseline, "best": self.best,
                "settings": settings_of(self.spec)}

    def finish(self, job) -> dict:
        """Decide (rank 0), load the shipped weights into the student on every rank; the metrics record."""
        record = self._record(job) if job.rank == 0 else None
        record = D.broadcast_object(record)
        path = record.pop("_path")
        if job.rank == 0 and path is not None:
            from sfda_deploy.checkpoint import load_model

            shipped, _ = load_model(path, "cpu")
            job.student.load_state_dict(shipped.state_dict())
        D.sync_module_states(job.student)
        return record

    def cleanup(self, job) -> None:
        """Remove the candidate checkpoints once ``model.safetensors`` holds the shipped one."""
        if job.rank == 0:
            shutil.rmtree(job.run_dir / SELECT_DIR, ignore_errors=True)

    # ---- internals -------------------------------------------------------------------------
    def _build_baseline(self, job) -> None:
        """AdaBN from the source (before any training): scored, evaluated where labels exist, saved."""
        from sfda_deploy.checkpoint import save_checkpoint

        model = self.make_baseline(job.student)
        result = job.eval_fn(model) if job.eval_fn is not None else None
        if result:
            result = {k: v for k, v in result.items() if k not in ("confusion", "unassigned")}
        self.baseline = {**self._score(job, "adabn", 0, result, model=model), "file": BASELINE_FILE,
                         "eval": result or None}
        save_checkpoint(job.run_dir / SELECT_DIR / BASELINE_FILE, model, job.meta)

    def _score(self, job, stage: str, iteration: int, result: Optional[dict], reference: bool = False,
               model=None) -> dict:
        s = score_model(model if model is not None else job.student, job.meta, self.images, job.device,
                        self.spec.snd_pixels, self.spec.seed)
        point = {"stage": stage, "iter": iteration, "scores": s["scores"],
                 "miou": None if not result else result.get("miou")}
        if reference:
            point.update(marginal=s["marginal"].tolist(), shares=s["shares"].tolist(), eval=result or None)
        elif self.reference is not None:
            point["drift"] = marginal_kl(s["marginal"], torch.tensor(self.reference["marginal"]))
            point["collapse"] = collapse(torch.tensor(self.reference["shares"]), s["shares"], names=self.names)
        if job.logger:
            job.logger.info("select %s/%d: %s%s", stage, iteration,
                            " ".join(f"{k}={v:.4f}" for k, v in s["scores"].items()),
                            f" collapse: {point['collapse']}" if point.get("collapse") else "")
        return point

    def _better(self, point: dict) -> bool:
        if self.spec.fallback and (point.get("collapse") or not self._is_candidate(point)):
            return False
        c = self.spec.criterion
        return self.best is None or point["scores"][c] > self.best["scores"][c]

    def _keep(self, job, point: dict, result: Optional[dict]) -> None:
        """Write the point's checkpoint, make it the best, drop files neither it nor ``last.pt`` needs."""
        from sfda_deploy.checkpoint import save_checkpoint

        name = f"{point['stage']}_{point['iter']:06d}.safetensors"
        folder = job.run_dir / SELECT_DIR
        save_checkpoint(folder / name, job.student, job.meta)
        self.best = {**point, "file": name, "eval": result or None}
        for old in folder.glob("*.safetensors"):
            if old.name not in (name, self._persisted, BASELINE_FILE):
                old.unlink()

    def _is_candidate(self, point: dict) -> bool:
        """``point`` (the newest) keeps the floor, and with a sticky floor so did every earlier point."""
        kept = floor_candidates(self.points, self.baseline, self.spec.floor, self.spec.tolerance, self.spec.sticky)
        return any(p is point for p in kept)

    def _record(self, job) -> dict:
        d = decide(self.points, self.reference, self.spec.criterion, self.spec.margin, self.spec.fallback,
                   self.spec.guard, self.baseline, self.spec.floor, self.spec.tolerance, self.spec.sticky)
        shipped = d["shipped"]
        is_reference = shipped is not None and shipped is self.reference
        is_baseline = shipped is not None and shipped is self.baseline
        if is_reference:
            path, evaluation = self.reference_path, self.reference.get("eval")
        elif is_baseline:
            path, evaluation = job.run_dir / SELECT_DIR / BASELINE_FILE, self.baseline.get("eval")
        elif shipped is not None:
            if (shipped["stage"], shipped["iter"]) != (self.best["stage"], self.best["iter"]):
                raise RuntimeError(f"selection kept {self.best['stage']}/{self.best['iter']} but decided "
                                   f"{shipped['stage']}/{shipped['iter']}")  # the two rules must agree
            path, evaluation = job.run_dir / SELECT_DIR / self.best["file"], self.best.get("eval")
        else:
            path, evaluation = None, None
        ref = None if self.reference is None else {k: v for k, v in self.reference.items() if k != "eval"}
        base = None if self.baseline is None else {k: v for k, v in self.baseline.items() if k not in ("eval", "file")}
        return {"criterion": self.spec.criterion, "criteria": list(CRITERIA), "every": self.spec.every,
                "images": len(self.images), "split": self.split, "margin": self.spec.margin,
                "fallback_enabled": self.spec.fallback, "fallback_by": self.spec.guard or self.spec.criterion,
                "floor_by": list(self.spec.floor) if self.baseline is not None else [],
                "floor_tolerance": self.spec.tolerance, "floor_sticky": self.spec.sticky,
                "reference": ref, "baseline": base, "points": self.points,
                "selected": _brief(d["selected"]), "shipped": {**(_brief(shipped) or {}), "reference": is_reference,
                                                               "baseline": is_baseline, "eval": evaluation},
                "fallback": d["fallback"], "reason": d["reason"], "_path": None if path is None else str(path)}


# ---- re-applying a rule to a finished run's record ---------------------------------------------
def matching_baseline(record: dict, candidate: Optional[dict], rel: float = 2e-3) -> Optional[dict]:
    """The record's own AdaBN point, else ``candidate`` (e.g. the point of an ``adabn`` run on the same target)
    when it was scored on the same sample: the two records' source scores agree within ``rel`` (the same
    sample on a GPU and on a CPU differs by up to 1e-3 on mix, a pixel share; another sample by percents).
    None otherwise."""
    if record.get("baseline"):
        return record["baseline"]
    ref = record.get("reference")
    if candidate is None or ref is None or not candidate.get("reference_scores"):
        return None
    same = all(abs(ref["scores"][c] - v) <= rel * max(abs(v), 1e-12) for c, v in candidate["reference_scores"].items())
    return candidate["point"] if same else None


def adabn_candidate(adabn_record: Optional[dict]) -> Optional[dict]:
    """What ``matching_baseline`` needs from an ``adabn`` run's selection record: its one point (as the
    baseline, stage ``adabn``) and the source scores it was compared with."""
    if not adabn_record or not adabn_record.get("points") or adabn_record.get("reference") is None:
        return None
    return {"point": {**adabn_record["points"][0], "stage": "adabn", "iter": 0},
            "reference_scores": adabn_record["reference"]["scores"]}


def replay(record: dict, spec: SelectionSpec, baseline: Optional[dict] = None) -> dict:
    """``validation.decide`` of ``spec`` over a finished run's scored points (``baseline``: its AdaBN point,
    ``matching_baseline``; used only with ``spec.baseline == "adabn"``)."""
    points = [p for p in record.get("points", []) if p.get("miou") is not None]
    base = baseline if spec.baseline == "adabn" else None
    return decide(points, record.get("reference"), spec.criterion, record.get("margin", spec.margin),
                  record.get("fallback_enabled", spec.fallback), spec.guard, base, spec.floor, spec.tolerance,
                  spec.sticky)
