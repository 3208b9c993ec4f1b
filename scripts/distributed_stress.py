"""Stress the two-process (gloo) paths: run tests/test_distributed.py's two-process tests N times in a row and
count how each run ended, by signal.

    OMP_NUM_THREADS=1 nice -n 10 python -m scripts.distributed_stress --runs 50
    python -m scripts.distributed_stress --runs 50 -k torchrun_adapt     # only the torchrun CLI case

Each run is one ``pytest`` process over the selected cases (default: every two-process test, the ``slow`` ones
of tests/test_distributed.py), started in a scratch folder with core dumps allowed and ``PYTHONFAULTHANDLER=1``
(a rank killed by a signal prints its Python stacks). A rank that dies by a signal shows in the test's output as
``terminated with signal SIGABRT`` (``torch.multiprocessing.spawn``) or ``Signal 6 (SIGABRT)`` /
``exitcode  : -6`` (torchrun); the script counts those per signal, keeps the output of every failed run and,
where a rank left a core file and gdb is installed, prints the C++ backtrace of every thread of that core.
It PRINTS one line per run and the totals; exit code 0 when every run passed.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "test_distributed.py"
_SIGNALS = [re.compile(r"terminated with signal (SIG[A-Z]+)"), re.compile(r"Signal \d+ \((SIG[A-Z]+)\) received"),
            re.compile(r"exitcode\s*:\s*-(\d+)")]


def signals_in(output: str) -> list[str]:
    """The signals that killed a process, as ``output`` reports them (one name per process, e.g. ``SIGABRT``).

    mp.spawn writes ``terminated with signal SIGABRT``; torchrun reports one process twice (``exitcode  : -6``
    and ``Signal 6 (SIGABRT) received``): the pattern with the most matches counts, not their sum.
    """
    import signal

    best: list[str] = []
    for pattern in _SIGNALS:
        names = [m.group(1) for m in pattern.finditer(output)]
        names = [signal.Signals(int(n)).name if n.isdigit() else n for n in names]
        best = max(best, names, key=len)
    return sorted(best)


def _backtraces(cores: list[Path]) -> str:
    """gdb's ``thread apply all bt`` for each core file (empty without gdb)."""
    gdb = shutil.which("gdb")
    if gdb is None or not cores:
        return ""
    out = []
    for core in cores:
        r = subprocess.run([gdb, "-batch", "-nx", "-ex", "thread apply all bt", sys.executable, str(core)],
                           capture_output=True, text=True, timeout=300)
        out.append(f"---- {core}\n{r.stdout[-20000:]}")
    return "\n".join(out)


def run_once(index: int, keyword: str, scratch: Path, keep: Path) -> tuple[bool, list[str], float]:
    """One pytest run of the selected two-process tests; (passed, signals that killed a process, seconds)."""
    work = scratch / f"run{index}"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow", "--rootdir", str(ROOT),
           "--basetemp", str(work / "tmp"), str(TESTS)] + (["-k", keyword] if keyword else [])
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = r.stdout + r.stderr
    passed = r.returncode == 0
    cores = sorted(p for p in work.rglob("core*") if p.is_file() and re.fullmatch(r"core(\.\d+)?", p.name))
    if not passed or cores:
        keep.mkdir(parents=True, exist_ok=True)
        (keep / f"run{index}.log").write_text(output + "\n" + _backtraces(cores))
        for core in cores:
            shutil.move(str(core), keep / f"run{index}-{core.parent.name}-{core.name}")
    shutil.rmtree(work, ignore_errors=True)
    return passed, signals_in(output) if not passed else [], seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="Runs in a row (default 50).")
    parser.add_argument("-k", dest="keyword", default="",
                        help="pytest -k expression choosing among the two-process tests (default: all of them).")
    parser.add_argument("--keep", default="runs/distributed_stress",
                        help="Folder for the output (and core files) of failed runs.")
    parser.add_argument("--stop-on-failure", action="store_true", help="Stop at the first failed run.")
    args = parser.parse_args(argv)
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    keep = Path(args.keep) / time.strftime("%Y%m%d-%H%M%S")
    signals: Counter = Counter()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="distributed_stress-") as scratch:
        for i in range(1, args.runs + 1):
            passed, killed, seconds = run_once(i, args.keyword, Path(scratch), keep)
            failed += not passed
            signals.update(killed)
            state = "passed" if passed else f"FAILED ({', '.join(killed) or 'no signal'}; output in {keep})"
            print(f"run {i}/{args.runs}: {state} in {seconds:.0f} s", flush=True)
            if failed and args.stop_on_failure:
                break
    runs = i
    print(f"\n{runs - failed}/{runs} runs passed; processes killed by a signal: "
          f"{dict(signals) if signals else 'none'}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
