"""Two CPU processes (gloo) train a few iterations: same weights on both ranks, rank-0 outputs only.

The spawned processes meet through a file (``file://`` rendezvous, a ``FileStore``), not a TCP port: a
port found free and released before the store binds it can be taken in between (it aborted about one
run in five on a busy machine). The torchrun tests use ``--standalone``, whose agent binds port 0 itself.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file


def _rendezvous(tmp_path, name: str = "rendezvous") -> str:
    """A fresh file the processes of one spawn meet through (it must not exist before the group starts)."""
    path = tmp_path / f"{name}.store"
    assert not path.exists()
    return str(path)


def _join(rank: int, world: int, store: str) -> None:
    """Join a gloo group through the file ``store`` as the package does (``distributed.join_group``), with
    torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) set so that ``distributed.init`` sees the job and
    finds the group already joined."""
    from sfda_deploy.adapt import distributed as D

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    D.join_group("cpu", rank, init_method=f"file://{store}")


def _leave() -> None:
    """Leave the group as the package's commands do (``distributed.leave_group``)."""
    from sfda_deploy.adapt import distributed as D

    D.leave_group(finished=True)


def _gloo_job(rank, world, store, run_dir, source=None, selection_spec=None, baseline=False):
    """One process of a two-process supervised run (3 iterations, gloo), as torchrun would start it.

    ``source``: weights to start from (default: the seed-0 initialisation); ``selection_spec``: add
    label-free selection (only rank 0 holds the sample: it scores, the other rank waits).
    """
    _join(rank, world, store)
    torch.set_num_threads(1)
    from pathlib import Path

    from sfda_deploy.adapt import distributed as D
    from sfda_deploy.adapt import loop_state as LS
    from sfda_deploy.adapt.methods import get_method
    from sfda_deploy.adapt.selection import tracker as S
    from sfda_deploy.metadata import ModelMeta
    from sfda_deploy.models import build_model
    from tests.tiny_data import TinyDataset

    r, w, _ = D.init("cpu")
    torch.manual_seed(0)
    method = get_method("supervised")
    cfg = method.make_config({"checkpoint_every": 0}, iters=3, batch=1, crop=(32, 32), lr=1e-2)
    model = build_model("tiny", num_classes=19)
    if source is not None:
        model.load_state_dict(load_file(source))
    data, meta = TinyDataset(n=4), ModelMeta(arch="tiny", input_size=(32, 32))
    selection = None
    if selection_spec is not None:
        images = [data[i]["image"] for i in range(3)] if r == 0 else []
        from sfda_deploy.adapt.methods.adabn import adabn_copy

        make = (lambda m: adabn_copy(m, data, meta, torch.device("cpu"), False)) if baseline else None
        selection = S.Selection(selection_spec, images, meta.classes.names, Path(source), make_baseline=make)
    return LS.LoopJob(method=method, cfg=cfg, stages=method.stages, student=model, meta=meta, train_set=data,
                     run_dir=Path(run_dir) if r == 0 else None, device=torch.device("cpu"), seed=0,
                     progress=False, rank=r, world=w, selection=selection)


def _worker(rank, world, store, run_dir, out_dir):
    from pathlib import Path

    from sfda_deploy.adapt import loop as L

    job = _gloo_job(rank, world, store, run_dir)
    L.run(job)
    torch.save(job.student.state_dict(), Path(out_dir) / f"rank{job.rank}.pt")
    _leave()


@pytest.mark.slow  # end to end (seconds to a minute): left out by `make test-fast`
def test_two_process_gloo(tmp_path):
    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    run_dir.mkdir()
    out_dir.mkdir()
    mp.spawn(_worker, args=(2, _rendezvous(tmp_path), str(run_dir), str(out_dir)), nprocs=2, join=True)
    a = torch.load(out_dir / "rank0.pt", weights_only=True)
    b = torch.load(out_dir / "rank1.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # averaged gradients + broadcast buffers keep ranks identical
    saved = load_file(str(run_dir / "model.safetensors"))
    assert torch.equal(saved["classifier.weight"], a["classifier.weight"])
    torch.manual_seed(0)
    from sfda_deploy.models import build_model

    assert not torch.equal(build_model("tiny", num_classes=19).classifier.weight, a["classifier.weight"])


@pytest.mark.slow  # end to end (seconds to a minute): left out by `make test-fast`
def test_torchrun_adapt_atp_two_processes_with_evaluation(tmp_path):
    """The command as users type it: ``torchrun --nproc_per_node=2 -m sfda_deploy adapt ...`` (gloo), all
    three ATP stages (P all-reduces its prototypes), a labelled val split evaluated before, during and
    after each stage (collective points every rank must reach, while only rank 0 evaluates)."""
    import subprocess
    import sys
    from pathlib import Path

    from sfda_deploy.checkpoint import save_checkpoint
    from sfda_deploy.data.synthetic import generate
    from sfda_deploy.metadata import ModelMeta
    from sfda_deploy.models import build_model

    data = generate(tmp_path / "synth", ["real"], {"train": 4, "val": 2}, (32, 64), seed=0, progress=False) / "real"
    torch.manual_seed(0)
    source = save_checkpoint(tmp_path / "src.safetensors", build_model("tiny", num_classes=19),
                             ModelMeta(arch="tiny", class_set="cityscapes19", input_size=(32, 64)))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SFDA_RUNS_DIR": str(tmp_path / "runs"),
           "PYTHONPATH": str(root)}
    sets = ["ignore_top=0", "ignore_bottom=0", "proj_dim=8", "contrast_start=1", "warmup_iters=0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",  # a free port
           "-m", "sfda_deploy", "adapt", "--target", "cityscapes", "--data-root", str(data), "--source", str(source),
           "--method", "atp", "--iters", "2", "--batch", "1", "--crop", "32", "32", "--workers", "0",
           "--eval-every", "1", "--name", "ddp", *[a for s in sets for a in ("--set", s)]]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    run = tmp_path / "runs" / "adapt" / "ddp"
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert "miou" in metrics["before"] and all("miou" in metrics[s]["eval"] for s in "ATP")
    assert all(len(metrics[s]["evals"]) == 1 for s in "ATP")  # --eval-every 1 with 2 iterations: at 1
    assert (run / "model.safetensors").is_file() and not (tmp_path / "runs" / "adapt" / "ddp-1").exists()


def _torchrun_adapt(tmp_path, *args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node=2 -m sfda_deploy adapt ARGS`` (the agent binds a free port
    itself: no port is picked and released first)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
            "-m", "sfda_deploy", "adapt", *args]


def _children(pid: int) -> list[int]:
    """The process ids whose parent is ``pid`` (Linux ``/proc``)."""
    from pathlib import Path

    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.slow  # three torchrun jobs (about a minute on 2 cores)
def test_torchrun_job_killed_then_resumed_ends_as_an_uninterrupted_one(tmp_path):
    """A two-process gloo ``adapt`` whose whole process group (agent and both ranks: a failed node) gets
    SIGKILL inside stage T, restarted with ``torchrun ... adapt --resume RUN``: the same weights and losses
    as the uninterrupted two-process run."""
    import signal
    import subprocess
    from pathlib import Path

    from sfda_deploy.adapt import loop_state as LS
    from sfda_deploy.checkpoint import save_checkpoint
    from sfda_deploy.metadata import ModelMeta
    from sfda_deploy.models import build_model
    from tests import fixtures_data as fx
    from tests.checkpoint_wait import wait_for_checkpoint

    data = fx.write_cityscapes(tmp_path / "cs", split="train", n=4, size=(40, 48))
    torch.manual_seed(0)
    source = save_checkpoint(tmp_path / "src.safetensors", build_model("tiny", num_classes=19),
                             ModelMeta(arch="tiny", input_size=(40, 48)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SFDA_RUNS_DIR": str(tmp_path / "runs"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    sets = ["ignore_top=0", "ignore_bottom=0", "proj_dim=8", "contrast_start=1", "checkpoint_every=1"]
    args = ["--target", "cityscapes", "--data-root", str(data), "--source", str(source), "--method", "atp",
            "--stages", "A,T", "--iters", "30", "--batch", "1", "--crop", "32", "32", "--workers", "0",
            *[a for s in sets for a in ("--set", s)]]
    full = subprocess.run(_torchrun_adapt(tmp_path, *args, "--name", "full"), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, (full.stdout + full.stderr)[-3000:]

    cut = tmp_path / "runs" / "adapt" / "cut"
    job = subprocess.Popen(_torchrun_adapt(tmp_path, *args, "--name", "cut"), cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_checkpoint(cut, 1, 5)  # rank 0 has checkpointed a few iterations of stage T
    workers = _children(job.pid)  # torchrun starts each worker in a session of its own
    assert len(workers) == 2, workers
    for pid in (*workers, job.pid):  # the node fails: both ranks and the agent die at once
        os.kill(pid, signal.SIGKILL)
    job.wait()
    state = LS.load_resume(cut)
    assert state["stage_index"] == 1 and 5 <= state["iteration"] < 30 and not (cut / "model.safetensors").exists()
    resumed = subprocess.run(_torchrun_adapt(tmp_path, "--resume", str(cut)), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    a = load_file(str(tmp_path / "runs" / "adapt" / "full" / "model.safetensors"))
    b = load_file(str(cut / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert LS.load_resume(cut)["history"] == LS.load_resume(tmp_path / "runs" / "adapt" / "full")["history"]
    assert not (tmp_path / "runs" / "adapt" / "cut-2").exists() and not (cut / "INCOMPLETE").exists()


# ---- device, backend and the fp16 update (items of issue 16) ------------------------------------
def test_backend_follows_the_device_not_what_is_visible():
    from sfda_deploy.adapt import distributed as D

    assert D.backend_for("cpu") == "gloo"  # even on a GPU box: NCCL cannot reduce CPU tensors
    assert D.backend_for("cuda") == "nccl" and D.backend_for("cuda:1") == "nccl"


def test_each_cuda_rank_gets_its_own_gpu():
    import pytest

    from sfda_deploy.adapt import distributed as D
    from sfda_deploy.errors import SfdaError

    assert D.process_device("cuda", 1, 2) == torch.device("cuda", 1)
    assert D.process_device("cuda:0", 3, 4) == torch.device("cuda", 3)  # torchrun: the local rank decides
    assert D.process_device("cpu", 1, 2) == torch.device("cpu")
    with pytest.raises(SfdaError, match="nproc_per_node=2"):
        D.process_device("cuda", 2, 2)


def test_cuda_job_under_torchrun_without_a_gpu_is_refused(monkeypatch):
    import pytest

    from sfda_deploy.adapt import distributed as D
    from sfda_deploy.errors import SfdaError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SfdaError, match="use --device cpu"):
        D.init("cuda")


def test_buffers_are_broadcast_only_when_training_changes_them():
    from sfda_deploy.adapt import distributed as D

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    assert D.buffers_change_in_training(net.train())
    assert not D.buffers_change_in_training(net.eval())  # frozen BN: running stats never move
    assert not D.buffers_change_in_training(torch.nn.Conv2d(3, 4, 1).train())
    bn = torch.nn.BatchNorm2d(4, track_running_stats=False).train()
    assert not D.buffers_change_in_training(bn)


def test_losses_to_host_reads_values_and_the_nonfinite_flag():
    from sfda_deploy.adapt import distributed as D

    losses = {"ce": torch.tensor(0.5), "nl": torch.tensor(0.25)}
    assert D.losses_to_host(losses, losses["ce"] + losses["nl"]) == ({"ce": 0.5, "nl": 0.25}, False)
    values, bad = D.losses_to_host({"ce": torch.tensor(float("nan"))}, torch.tensor(float("nan")))
    assert bad and values["ce"] != values["ce"]


def _fp16_update_worker(rank, world, store, out_dir, overflow):
    _join(rank, world, store)
    torch.set_num_threads(1)
    from pathlib import Path

    from sfda_deploy.adapt import amp
    from sfda_deploy.adapt import distributed as D

    D.init("cpu")
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    # loss = w·x: its gradient is x. Rank 0: (1, 3); rank 1: (3, 5), or an overflow (inf) in its first entry.
    x = torch.tensor([1.0, 3.0]) if rank == 0 else torch.tensor([float("inf") if overflow else 3.0, 5.0])
    optimizer = torch.optim.SGD([w], lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    amp.apply_gradients((w * x).sum(), optimizer, scaler, [w])
    torch.save({"w": w.detach().clone(), "scale": scaler.get_scale()}, Path(out_dir) / f"rank{rank}.pt")
    _leave()


@pytest.mark.slow  # end to end (seconds to a minute): left out by `make test-fast`
def test_fp16_update_reduces_before_unscaling(tmp_path):
    """One rank's overflow makes EVERY rank skip the step (weights untouched, scale halved); without it,
    both step with the averaged gradient: w − 0.5·((1,3)+(3,5))/2 = (1,2) − (1,2) = (0,0)."""
    for overflow, want_w, want_scale in ((True, [1.0, 2.0], 2.0), (False, [0.0, 0.0], 4.0)):
        out = tmp_path / str(overflow)
        out.mkdir()
        mp.spawn(_fp16_update_worker, args=(2, _rendezvous(tmp_path, str(overflow)), str(out), overflow), nprocs=2,
                 join=True)
        for rank in (0, 1):
            got = torch.load(out / f"rank{rank}.pt", weights_only=True)
            assert got["w"].tolist() == want_w, (overflow, rank)
            assert got["scale"] == want_scale, (overflow, rank)


def _run_selection_job(job, out_dir, what):
    """Run ``job`` in a worker, save its rank's final weights and ``what(metrics["selection"])``."""
    from pathlib import Path

    from sfda_deploy.adapt import loop as L

    metrics = L.run(job)
    torch.save(job.student.state_dict(), Path(out_dir) / f"rank{job.rank}.pt")
    (Path(out_dir) / f"rank{job.rank}.txt").write_text(str(what(metrics["selection"])))
    _leave()


def _selection_worker(rank, world, store, run_dir, out_dir, source):
    """The same two-process run with label-free selection and a margin no checkpoint can beat: rank 0
    scores and decides to fall back, every rank must end with the source's weights."""
    from sfda_deploy.adapt.selection import tracker as S

    job = _gloo_job(rank, world, store, run_dir, source, S.SelectionSpec(select_every=1, fallback_margin=1e9))
    _run_selection_job(job, out_dir, lambda sel: sel["fell_back"])


def _spawn_selection(tmp_path, worker):
    """Two processes of ``worker`` from a seeded tiny source: ``(run_dir, out_dir, model, meta, source)``."""
    from sfda_deploy.checkpoint import save_checkpoint
    from sfda_deploy.metadata import ModelMeta
    from sfda_deploy.models import build_model

    run_dir, out_dir = tmp_path / "run", tmp_path / "out"
    run_dir.mkdir()
    out_dir.mkdir()
    torch.manual_seed(1)
    model, meta = build_model("tiny", num_classes=19), ModelMeta(arch="tiny", input_size=(32, 32))
    source = save_checkpoint(tmp_path / "src.safetensors", model, meta)
    mp.spawn(worker, args=(2, _rendezvous(tmp_path), str(run_dir), str(out_dir), str(source)), nprocs=2, join=True)
    return run_dir, out_dir, model, meta, source


def _assert_every_rank_ships(run_dir, out_dir, expected, record: str):
    """Both ranks and ``model.safetensors`` hold ``expected``; each rank's saved record reads ``record``."""
    for r in (0, 1):
        weights = torch.load(out_dir / f"rank{r}.pt", weights_only=True)
        assert all(torch.equal(weights[k], expected[k]) for k in expected), r
        assert (out_dir / f"rank{r}.txt").read_text() == record
    saved = load_file(str(run_dir / "model.safetensors"))
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


@pytest.mark.slow  # end to end (seconds to a minute): left out by `make test-fast`
def test_two_process_selection_agrees_on_the_fallback(tmp_path):
    run_dir, out_dir, _, _, source = _spawn_selection(tmp_path, _selection_worker)
    _assert_every_rank_ships(run_dir, out_dir, load_file(str(source)), "True")


def _baseline_worker(rank, world, store, run_dir, out_dir, source):
    """Two processes with the AdaBN baseline; rank 0's scores are scripted so that no checkpoint keeps the SND
    floor: rank 0 builds and ships AdaBN, every rank must end with its weights."""
    from sfda_deploy.adapt.selection import tracker as S

    calls = iter([{"im": 1.0, "snd": 5.0}, {"im": 1.2, "snd": 5.0}] + [{"im": 2.0, "snd": 4.0}] * 3)
    share = torch.tensor([0.5, 0.5] + [0.0] * 17, dtype=torch.float64)
    S.score_model = lambda *a, **k: {"scores": {**next(calls), "mix": 0.5}, "marginal": share, "shares": share}
    job = _gloo_job(rank, world, store, run_dir, source, S.SelectionSpec(select_every=1), baseline=True)
    _run_selection_job(job, out_dir, lambda sel: sel["shipped"]["baseline"])


@pytest.mark.slow  # end to end (seconds to a minute): left out by `make test-fast`
def test_two_process_selection_ships_the_adabn_baseline_on_every_rank(tmp_path):
    from sfda_deploy.adapt.methods.adabn import adabn_copy
    from tests.tiny_data import TinyDataset

    run_dir, out_dir, model, meta, source = _spawn_selection(tmp_path, _baseline_worker)
    expected = adabn_copy(model, TinyDataset(n=4), meta, torch.device("cpu"), False).state_dict()
    src = load_file(str(source))
    assert not all(torch.equal(expected[k], src[k]) for k in src)  # AdaBN moved the BN statistics
    _assert_every_rank_ships(run_dir, out_dir, expected, "True")


@pytest.mark.parametrize("finished, calls", [(True, ["barrier", "destroy"]), (False, ["destroy"])])
def test_leave_group_ends_only_the_group_the_package_joined(monkeypatch, finished, calls):
    """A finished command waits for every rank before tearing its group down; a failed one does not wait
    (the other ranks may be gone); a group someone else started is left alone; leaving twice does nothing."""
    from sfda_deploy.adapt import distributed as D

    made = []
    monkeypatch.setattr(D.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(D.dist, "barrier", lambda: made.append("barrier"))
    monkeypatch.setattr(D.dist, "destroy_process_group", lambda: made.append("destroy"))
    monkeypatch.setattr(D, "_joined", False)
    D.leave_group(finished)
    assert made == []  # not ours
    monkeypatch.setattr(D, "_joined", True)
    D.leave_group(finished)
    D.leave_group(finished)
    assert made == calls


_LEAVE_PROGRAM = """
import os, sys, weakref
os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
import torch
import torch.distributed as dist
from sfda_deploy.adapt import distributed as D
D.join_group("cpu", 0, init_method="file://" + sys.argv[1])
group = weakref.ref(dist.GroupMember.WORLD)
torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])  # the first optimiser imports torch._dynamo
D.leave_group(finished=True)
print("freed" if group() is None else "alive")
"""


def test_leaving_the_group_frees_it_even_after_the_first_optimiser(tmp_path):
    """``leave_group`` frees the process group (and so joins its gloo threads before interpreter shutdown),
    also when the first optimiser was built after joining: in a fresh interpreter, where that optimiser is
    what imports the modules that would keep the group as a default argument (``import_group_defaults``)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-c", _LEAVE_PROGRAM, str(tmp_path / "store")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "freed"
