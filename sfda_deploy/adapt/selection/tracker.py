"""Checkpoint selection inside the loop: score the student on a fixed unlabelled target sample at chosen
iterations, keep the best checkpoint on disk, and at the end ship it, or the training-free AdaBN baseline, or
the source (``rule.decide``).

The loop calls, through ``LoopJob.selection`` (rank 0 computes, every rank reaches the barriers):

* ``begin(job, resume, before)`` once: restores the state saved in ``last.pt``, or scores the source and
  builds, scores and saves the AdaBN baseline (``select/baseline.safetensors``);
* ``due(stage, done, iters)`` / ``observe(job, stage, iteration, eval_result)`` at the scoring points
  (every ``every`` iterations and each stage end);
* ``stage_begins(job)`` / ``stage_ends(job, stage)`` around each stage (``--stage-keep best``: a stage whose end
  scores lower on the criterion than its start hands its start weights to the next stage);
* ``state()`` when it writes ``last.pt`` (the best-so-far survives ``--resume``);
* ``finish(job)`` after the last stage: decides, loads the shipped weights into the student on every
  rank and returns the ``metrics.json`` record; ``cleanup(job)`` after ``model.safetensors`` is written.

Files: the best checkpoint so far is ``select/<stage>_<iteration>.safetensors`` (atomic writes); the one
the last ``last.pt`` refers to is kept until a newer state is saved, so a crash never leaves a resumable
state pointing at a deleted file; with ``--stage-keep best`` the weights the current stage started from are
``select/stage_start.safetensors``.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from sfda_deploy.adapt import distributed as D
from sfda_deploy.adapt.selection.collapse import collapse_against
from sfda_deploy.adapt.selection.criteria import anchor_of, value
from sfda_deploy.adapt.selection.probe import score_model
from sfda_deploy.adapt.selection.rule import decide, floor_candidates
from sfda_deploy.adapt.selection.scores import CRITERIA, marginal_kl
from sfda_deploy.adapt.selection.settings import SelectionSpec, settings_of

POINTS_PER_STAGE = 4  # the default scoring period: a quarter of each stage ...
MIN_PERIOD = 50       # ... but no more often than every 50 iterations (short runs: stage ends only)
SELECT_DIR = "select"
BASELINE_FILE = "baseline.safetensors"
START_FILE = "stage_start.safetensors"


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
        self.start: Optional[dict] = None  # the scored point of the weights the current stage started from
        self.handed_on: list[dict] = []     # --stage-keep best: what each stage handed to the next

    # ---- the loop's calls ------------------------------------------------------------------
    def begin(self, job, resume: Optional[dict], before: Optional[dict]) -> None:
        """Restore the state of ``last.pt``, or score the source model (the student before training)."""
        saved = (resume or {}).get("selection")
        if saved:
            self.points, self.reference, self.best = saved["points"], saved["reference"], saved["best"]
            self.baseline = saved.get("baseline")
            self.start, self.handed_on = saved.get("start"), list(saved.get("handed_on", []))
            self._persisted = self.best["file"] if self.best else None
        elif resume is None and self.reference_stage is None and self.reference_path is not None and job.rank == 0:
            self.reference = self._score(job, "source", 0, before, reference=True)
            self.start = self.reference
            if self.make_baseline is not None:
                self._build_baseline(job)
        D.barrier()

    def due(self, stage: str, done: int, iters: int) -> bool:
        return stage != self.reference_stage and is_due(done, iters, self.spec.select_every)

    def observe(self, job, stage: str, iteration: int, result: Optional[dict]) -> None:
        """Score the student now (``result``: its evaluation at this point, where labels exist)."""
        if job.rank == 0:
            if stage == self.reference_stage:
                self.reference = self.start = self._score(job, stage, iteration, result, reference=True)
            else:
                point = self._score(job, stage, iteration, result)
                self.points.append(point)
                if self._better(point):
                    self._keep(job, point, result)
        D.barrier()

    def stage_begins(self, job) -> None:
        """A stage starts from the student's weights (not on a resume inside it): with ``--stage-keep best`` they
        are saved, to be handed on instead of the stage's end if that scores lower."""
        if self.spec.stage_keep == "best" and self.start is not None and job.rank == 0:
            from sfda_deploy.checkpoint import save_checkpoint

            save_checkpoint(job.run_dir / SELECT_DIR / START_FILE, job.student, job.meta)
        D.barrier()

    def stage_ends(self, job, stage: str) -> Optional[str]:
        """After the stage's end point was scored: ``"start"`` when ``--stage-keep best`` found its end scoring
        lower on the criterion than its start (the student gets the start weights back, on every rank),
        ``"end"`` when it did not; None when nothing was compared (``--stage-keep last``, no start point)."""
        kept = None
        if self.spec.stage_keep == "best" and self.start is not None and job.rank == 0 and stage != self.reference_stage:
            end, c = self.points[-1], self.spec.select_by
            end_score, start_score = self._value(end), self._value(self.start)
            kept = "start" if end_score < start_score else "end"
            self.handed_on.append({"stage": stage, "kept": kept, "select_by": c, "end_score": end_score,
                                   "start": {k: self.start[k] for k in ("stage", "iter")},
                                   "start_score": start_score})
            if kept == "start":
                from sfda_deploy.checkpoint import load_model

                started, _ = load_model(job.run_dir / SELECT_DIR / START_FILE, "cpu")
                job.student.load_state_dict(started.state_dict())
            else:
                self.start = end
        if self.spec.stage_keep == "best":
            kept = D.broadcast_object(kept)
            D.sync_module_states(job.student)
        return kept

    def state(self) -> dict:
        """The resumable state (plain data, ``weights_only``-loadable)."""
        self._persisted = self.best["file"] if self.best else None
        return {"points": self.points, "reference": self.reference, "baseline": self.baseline, "best": self.best,
                "start": self.start, "handed_on": self.handed_on, "settings": settings_of(self.spec)}

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
        # every point keeps its predicted-class shares: a collapse reference can be re-applied to the run offline
        point = {"stage": stage, "iter": iteration, "scores": s["scores"],
                 "miou": None if not result else result.get("miou"), "shares": s["shares"].tolist()}
        if reference:
            point.update(marginal=s["marginal"].tolist(), eval=result or None)
        elif self.reference is not None:
            point["drift"] = marginal_kl(s["marginal"], torch.tensor(self.reference["marginal"]))
            point["collapse"] = self._collapse(s["shares"], against_baseline=stage != "adabn")
        if job.logger:
            job.logger.info("select %s/%d: %s%s", stage, iteration,
                            " ".join(f"{k}={v:.4f}" for k, v in s["scores"].items()),
                            f" collapse: {point['collapse']}" if point.get("collapse") else "")
        return point

    @property
    def collapse_ref(self) -> str:
        """The collapse reference in force: ``spec.collapse_ref``, or the source's without an AdaBN baseline."""
        return self.spec.collapse_ref if self.baseline is not None else "source"

    def _collapse(self, shares: torch.Tensor, against_baseline: bool = True) -> Optional[str]:
        """Why a point with these predicted-class shares collapsed (None if it did not); the AdaBN baseline
        itself is judged against the source."""
        reference = self.collapse_ref if against_baseline else "source"
        def shares_of(point):
            return torch.tensor(point["shares"], dtype=torch.float64)

        adabn = shares_of(self.baseline) if self.baseline is not None else None
        return collapse_against(reference, shares_of(self.reference), adabn, shares, names=self.names)

    def _better(self, point: dict) -> bool:
        if self.spec.fallback and (point.get("collapse") or not self._is_candidate(point)):
            return False
        return self.best is None or self._value(point) > self._value(self.best)

    def _value(self, point: dict) -> float:
        """``point``'s score on ``select_by`` (a composite's against ``criteria.anchor_of``, as ``rule.decide``
        measures it)."""
        return value(point, self.spec.select_by, anchor_of(self.baseline, self.reference, self.points))

    def _keep(self, job, point: dict, result: Optional[dict]) -> None:
        """Write the point's checkpoint, make it the best, drop files neither it nor ``last.pt`` needs."""
        from sfda_deploy.checkpoint import save_checkpoint

        name = f"{point['stage']}_{point['iter']:06d}.safetensors"
        folder = job.run_dir / SELECT_DIR
        save_checkpoint(folder / name, job.student, job.meta)
        self.best = {**point, "file": name, "eval": result or None}
        for old in folder.glob("*.safetensors"):
            if old.name not in (name, self._persisted, BASELINE_FILE, START_FILE):
                old.unlink()

    def _is_candidate(self, point: dict) -> bool:
        """``point`` (the newest) keeps the floor, and with a sticky floor so did every earlier point."""
        kept = floor_candidates(self.points, self.baseline, self.spec.floor_by, self.spec.floor_tolerance,
                                self.spec.floor_sticky)
        return any(p is point for p in kept)

    def _record(self, job) -> dict:
        d = decide(self.points, self.reference, self.spec, self.baseline)
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
        spec = self.spec
        return {"select_by": spec.select_by, "criteria": list(CRITERIA), "select_every": spec.select_every,
                "select_images": len(self.images), "split": self.split, "fallback_margin": spec.fallback_margin,
                "fallback": spec.fallback, "fallback_by": spec.fallback_by or spec.select_by,
                "fallback_to": spec.fallback_to,
                "floor_by": list(spec.floor_by) if self.baseline is not None else [],
                "floor_tolerance": spec.floor_tolerance, "floor_sticky": spec.floor_sticky,
                "collapse_ref": self.collapse_ref, "stage_keep": self.spec.stage_keep, "handed_on": self.handed_on,
                "reference": ref, "baseline": base, "points": self.points,
                "selected": _brief(d["selected"]), "shipped": {**(_brief(shipped) or {}), "reference": is_reference,
                                                               "baseline": is_baseline, "eval": evaluation},
                "fell_back": d["fell_back"], "reason": d["reason"], "_path": None if path is None else str(path)}
