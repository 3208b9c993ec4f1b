"""Issue 31: two runs at once. Processes started together with the same --name get their own run
directories (``mkdir`` is atomic), and ``adapt --resume`` refuses a run whose writer is alive, taking over
the mark of one that died."""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from sfda_deploy import runs
from tests.conftest import assert_user_error
from tests.test_reliability import _adapt_args, _dead_pid
from tests.tiny_data import patch_datasets

REPO = Path(__file__).resolve().parents[1]
# Each process waits for the start file, then creates its run directory at (nearly) the same instant.
CREATE = ("import os, sys, time\n"
          "from pathlib import Path\n"
          "go = Path(sys.argv[1])\n"
          "deadline = time.time() + 60\n"
          "while not go.exists() and time.time() < deadline:\n"
          "    time.sleep(0.001)\n"
          "from sfda_deploy.runs import new_run_dir\n"
          "print(new_run_dir('segment', 'same'), os.getpid())\n")


def test_20_processes_started_together_with_the_same_name_get_20_directories(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "SFDA_RUNS_DIR": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    go = tmp_path / "go"
    # import the package before the start signal, so the 20 creations overlap rather than the imports
    code = "import sfda_deploy.runs\n" + CREATE
    procs = [subprocess.Popen([sys.executable, "-c", code, str(go)], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(20)]
    time.sleep(3.0)  # let them all reach the wait
    go.touch()
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    dirs = [Path(d) for d, _ in outs]
    assert len(set(dirs)) == 20
    assert sorted(d.name for d in dirs) == sorted(["same"] + [f"same-{i}" for i in range(2, 21)])
    for (d, pid) in outs:  # each directory holds only its own writer's mark: no file is shared
        assert [p.name for p in Path(d).iterdir()] == [runs.INCOMPLETE]
        assert (Path(d) / runs.INCOMPLETE).read_text().split()[:2] == ["pid", pid]


def test_resume_is_refused_while_the_writer_lives_and_takes_over_a_dead_ones_mark(invoke, monkeypatch, tmp_path):
    from sfda_deploy.adapt.methods import METHODS

    patch_datasets(monkeypatch, labelled=False)
    original = METHODS["ldbe"]
    ld = original.stages[0]

    def nan_step(batch, student, teacher, state, cfg):  # a run that stops after writing its config
        out = ld.step(batch, student, teacher, state, cfg)
        return {**out, "ce": out["ce"] * float("nan")}

    monkeypatch.setitem(METHODS, "ldbe", dataclasses.replace(original, stages=(
        dataclasses.replace(ld, step=nan_step), original.stages[1])))
    assert invoke(_adapt_args(tmp_path, "--name", "r", "--set", "rounds=1")).exit_code == 2
    monkeypatch.setitem(METHODS, "ldbe", original)
    run = tmp_path / "runs" / "adapt" / "r"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:  # another process is writing the run (its mark names a live pid on this host)
        (run / runs.INCOMPLETE).write_text(f"pid {writer.pid} host {socket.gethostname()} started now\n")
        assert_user_error(invoke(["adapt", "--resume", run]), f"{run} is being written by another process",
                          "wait for it to end, or stop it, before resuming")
        assert (run / runs.INCOMPLETE).read_text().split()[1] == str(writer.pid)  # left as it was
    finally:
        writer.kill()
        writer.wait()
    (run / runs.INCOMPLETE).write_text(f"pid {_dead_pid()} host {socket.gethostname()} started then\n")
    r = invoke(["adapt", "--resume", run])  # the writer died: its mark is stale, the resume takes over
    assert r.exit_code == 0, r.output
    assert runs.run_status(run) == ("finished", "") and (run / "model.safetensors").is_file()
