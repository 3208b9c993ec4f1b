"""``sfda-deploy segment SOURCE... --ray``: many videos or image folders spread over a Ray cluster.

One worker (a Ray actor) per GPU, or per ``--threads`` CPUs on a CPU cluster, each holding ONE backend
of the model for all the sources it is given; sources go to whichever worker is free (per-file tasks,
longest first is not attempted: the order given). Each source is segmented by ``run_segment`` itself
into ``runs/segment/NAME/sources/<source>/``, so its files are exactly those ``segment SOURCE``
writes. The driver draws the one progress bar (sources done, frames so far). A source that fails is
tried once more (on any worker; a worker that died is replaced), then reported in ``summary.json``
and the closing line, and the others' outputs stay.

``--ray`` starts a local cluster on this machine (all its CPUs/GPUs); ``--ray-address ADDRESS`` joins a
running one (``ray start --head`` on one node, ``ray start --address HEAD:6379`` on the others). Paths
must then be the same on every node (a shared file system).
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from sfda_deploy.config import SegmentConfig
from sfda_deploy.config_build import save_config
from sfda_deploy.device import is_cuda
from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural, say
from sfda_deploy.progress import progress
from sfda_deploy.runs import finish_run, new_run_dir, write_json

INSTALL = "pip install 'sfda-deploy[ray]'"
ATTEMPTS = 2  # a failed source is tried once more before it is reported


def import_ray():
    """The ``ray`` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SfdaError(f"--ray needs Ray, which is not installed: {INSTALL} (or drop --ray)") from None
    return ray


@dataclass(frozen=True)
class ActorPlan:
    count: int           # workers
    num_cpus: float      # Ray resources each worker holds
    num_gpus: float
    device: str          # the device a worker runs on (a GPU worker sees its own GPU as cuda:0)
    threads: int         # CPU threads of its backend


def plan_actors(resources: dict[str, float], device: str, threads: Optional[int], asked: Optional[int],
                sources: int) -> ActorPlan:
    """How many workers, holding what: one per GPU for a CUDA run, else one per ``threads`` CPUs (default 1);
    never more than there are sources.

    Raises:
        SfdaError: a CUDA run on a cluster without GPUs, or more workers asked than the cluster can hold.
    """
    threads = threads or 1
    if is_cuda(device):
        slots, what = int(resources.get("GPU", 0)), "GPU"
        if slots < 1:
            raise SfdaError(f"--device {device} with --ray but the Ray cluster has no GPU: use --device cpu, or "
                            "join a cluster with GPUs (--ray-address)")
        per = dict(num_cpus=1.0, num_gpus=1.0, device="cuda")
    else:
        slots, what = int(resources.get("CPU", 0)) // threads, f"{plural(threads, 'CPU')}"
        per = dict(num_cpus=float(threads), num_gpus=0.0, device="cpu")
    if slots < 1:
        raise SfdaError(f"the Ray cluster has too few CPUs for one worker of {plural(threads, 'thread')}: "
                        "pass a smaller --threads")
    if asked is not None and asked > slots:
        raise SfdaError(f"--ray-actors {asked} is more than the cluster holds ({slots} of {what} each): "
                        f"pass --ray-actors {slots} or fewer")
    return ActorPlan(count=max(1, min(asked or slots, sources)), threads=threads, **per)


def source_names(sources: Sequence[str]) -> list[str]:
    """One folder name per source (its file or folder name; ``-2``, ``-3`` ... where two are alike)."""
    names, seen = [], set()
    for spec in sources:
        base = Path(str(spec).rstrip("/")).name or "source"
        name, i = base, 1
        while name in seen:
            i += 1
            name = f"{base}-{i}"
        seen.add(name)
        names.append(name)
    return names


class SegmentWorker:
    """One worker: one backend, any number of sources, each written by ``run_segment`` (made a Ray actor by
    ``run_fleet``). Its own lines and bars stay quiet: the driver reports."""

    def __init__(self, cfg: SegmentConfig, device: str, threads: int):
        from sfda_deploy.messages import set_reporter
        from sfda_deploy.progress import hide_bars
        from sfda_deploy.runtime.backends import load_backend

        set_reporter(lambda line, err: None)
        hide_bars()
        self.cfg = dataclasses.replace(cfg, device=device, threads=threads, ray=False, ray_address=None,
                                       ray_actors=None)
        self.backend = None
        if not cfg.adapt:  # --adapt changes the weights: each source starts from the file's
            self.backend = load_backend(cfg.model, cfg.backend, device, cfg.imgsz, cfg.batch, threads, cfg.ort_opt)

    def segment(self, source: str, run_dir: str) -> dict[str, Any]:
        from sfda_deploy.commands.segment import run_segment

        out = Path(run_dir)
        shutil.rmtree(out, ignore_errors=True)  # what an earlier attempt left
        cfg = dataclasses.replace(self.cfg, source=source, name=out.name)
        cpu = time.process_time()  # every thread of this worker: decode, network, encode
        try:
            run_segment(cfg, out, backend=self.backend)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        import json

        summary = json.loads((out / "summary.json").read_text())
        return {"frames": summary["frames"], "fps_end_to_end": summary["fps_end_to_end"], "wall_s": summary["wall_s"],
                "cpu_s": round(time.process_time() - cpu, 3)}


def _reason(error: BaseException) -> str:
    """The one line of what went wrong in a worker (the user error inside Ray's wrapper)."""
    cause = getattr(error, "cause", None)
    text = str(cause if cause is not None else error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:300]


def _absolute(spec: str) -> str:
    """Files and folders as absolute paths (workers run elsewhere); streams, globs and webcams as given."""
    path = Path(spec)
    return str(path.resolve()) if path.exists() else spec


def check_sources(cfg: SegmentConfig, sources: Sequence[str]) -> list[str]:
    sources = list(sources) or ([cfg.source] if cfg.source else [])
    if not sources:
        raise SfdaError("segment --ray needs sources: sfda-deploy segment a.mp4 b.mp4 frames/ --ray")
    if not (cfg.ray or cfg.ray_address):
        raise SfdaError(f"{plural(len(sources), 'source')} given: add --ray (or --ray-address ADDRESS) to spread "
                        "them over a Ray cluster, or run segment once per source")
    if cfg.labels:
        raise SfdaError("--labels scores one source: drop it with --ray (score each source apart)")
    from sfda_deploy.runtime.backends import resolve_model_path

    resolve_model_path(cfg.model)  # a missing model fails here, not in every worker
    return [_absolute(s) for s in sources]


def run_fleet(cfg: SegmentConfig, sources: Sequence[str]) -> Path:
    """Segment every source on a Ray cluster; returns the fleet's run directory (``summary.json`` inside).

    Raises:
        SfdaError: Ray missing, a bad plan, or (after all outputs were written) sources that failed twice.
    """
    from sfda_deploy.commands.segment import _check

    _check(cfg)
    sources = check_sources(cfg, sources)
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=cfg.ray_address, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    try:
        plan = plan_actors(ray.cluster_resources(), cfg.device, cfg.threads, cfg.ray_actors, len(sources))
        run_dir = new_run_dir("segment", cfg.name).resolve()
        (run_dir / "sources").mkdir()
        say(f"ray: {plural(plan.count, 'worker')} ({plan.device}, {plural(plan.threads, 'thread')} each) over "
            f"{plural(len(sources), 'source')}; outputs: {run_dir / 'sources'}")
        t0 = time.perf_counter()
        records = _schedule(ray, plan, cfg, sources, run_dir)
        wall = time.perf_counter() - t0  # the workers' start-up included, Ray's own not
    finally:
        if started:
            ray.shutdown()
    summary = _summary(cfg, plan, records, wall)
    write_json(run_dir / "summary.json", summary)
    save_config(run_dir, cfg)
    finish_run(run_dir)
    failed = [r for r in records if r["status"] == "failed"]
    say(f"{len(records) - len(failed)} of {plural(len(records), 'source')} segmented, "
        f"{plural(summary['frames'], 'frame')} at {summary['fps_overall']:.1f} fps overall → {run_dir}")
    if failed:
        first = failed[0]
        raise SfdaError(f"{plural(len(failed), 'source')} failed twice (the others' outputs are in {run_dir}; "
                        f"summary.json lists them): {first['source']}: {first['error']}")
    return run_dir


def _schedule(ray, plan: ActorPlan, cfg: SegmentConfig, sources: list[str], run_dir: Path) -> list[dict]:
    """Feed sources to free workers, retry a failure once, replace a dead worker; one record per source."""
    worker = ray.remote(num_cpus=plan.num_cpus, num_gpus=plan.num_gpus)(SegmentWorker)
    start = lambda: worker.remote(cfg, plan.device, plan.threads)  # noqa: E731
    idle = [start() for _ in range(plan.count)]
    folders = dict(zip(sources, source_names(sources)))
    records = {s: {"source": s, "status": "pending", "attempts": 0, "run_dir": None, "error": None}
               for s in sources}
    queue, running = deque(sources), {}
    frames = 0
    t0 = time.perf_counter()
    with progress(total=len(sources), unit="source", desc="segment --ray", leave=True) as bar:
        while queue or running:
            while idle and queue:
                actor, source = idle.pop(), queue.popleft()
                records[source]["attempts"] += 1
                out = run_dir / "sources" / folders[source]
                running[actor.segment.remote(source, str(out))] = (actor, source, out)
            (done,), _ = ray.wait(list(running), num_returns=1)
            actor, source, out = running.pop(done)
            record = records[source]
            try:
                result = ray.get(done)
            except ray.exceptions.RayActorError as e:  # the worker died: a new one takes its place
                idle.append(start())
                error = e
            except ray.exceptions.RayError as e:  # the source failed (RayTaskError wraps its error)
                idle.append(actor)
                error = e
            else:
                idle.append(actor)
                record.update(status="ok", run_dir=str(out.relative_to(run_dir)), **result)
                frames += result["frames"]
                bar.update(1)
                bar.set_postfix({"frames": frames, "fps": f"{frames / (time.perf_counter() - t0):.1f}"})
                continue
            record["error"] = _reason(error)
            if record["attempts"] < ATTEMPTS:
                queue.append(source)
            else:
                record["status"] = "failed"
                bar.update(1)
    for actor in idle:
        ray.kill(actor)
    return [records[s] for s in sources]


def _summary(cfg: SegmentConfig, plan: ActorPlan, records: list[dict], wall: float) -> dict[str, Any]:
    frames = sum(r.get("frames", 0) for r in records if r["status"] == "ok")
    wall = max(wall, 1e-6)
    return {"sources": records, "ok": sum(r["status"] == "ok" for r in records),
            "failed": sum(r["status"] == "failed" for r in records), "frames": frames,
            "worker_cpu_s": round(sum(r.get("cpu_s", 0.0) for r in records), 3),
            "wall_s": round(wall, 3), "fps_overall": round(frames / wall, 3),
            "workers": plan.count, "worker_device": plan.device, "threads_per_worker": plan.threads,
            "ray_address": cfg.ray_address or "local", "model": cfg.model or "bundled demo model"}
