"""scripts/distributed_stress.py: how a two-process test run reports the signal that killed a rank."""
from scripts.distributed_stress import signals_in


def test_spawned_ranks_killed_by_a_signal_are_counted_once_each():
    output = ("torch.multiprocessing.spawn.ProcessExitedException: process 1 terminated with signal SIGABRT\n"
              "E   process 0 terminated with signal SIGSEGV")
    assert signals_in(output) == ["SIGABRT", "SIGSEGV"]


def test_a_torchrun_rank_reported_twice_counts_once():
    """torchrun names the same failed rank in an ``exitcode`` line and a ``Signal`` line."""
    output = ("[0]:\n  time      : 2026-05-01\n  rank      : 1 (local_rank: 1)\n  exitcode  : -6 (pid: 123)\n"
              "  error_file: <N/A>\n  traceback : Signal 6 (SIGABRT) received by PID 123")
    assert signals_in(output) == ["SIGABRT"]


def test_a_run_without_a_signal_counts_nothing():
    assert signals_in("E   AssertionError: assert 1 == 2\nexitcode  : 1 (pid: 5)") == []
