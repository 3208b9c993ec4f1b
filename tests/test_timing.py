"""Timing statistics (known answers by hand), the alternating loop, and the busy warning via the CLI."""
from __future__ import annotations

import json

import pytest

from sfda_deploy.errors import SfdaError
from sfda_deploy.runtime import timing as T
from tests.runtime_data import make_checkpoint, make_onnx


def test_median_known_answers():
    assert T.median([3.0, 1.0, 2.0]) == 2.0
    assert T.median([4.0, 1.0, 3.0, 2.0]) == 2.5  # (2 + 3) / 2
    with pytest.raises(SfdaError, match="--iters"):
        T.median([])


def test_relative_spread_known_answers():
    # [1, 2, 3, 4, 5]: p25 at position 1 → 2, p75 at position 3 → 4, median 3: (4 - 2) / 3
    assert T.relative_spread([5, 1, 4, 2, 3]) == pytest.approx(2 / 3)
    assert T.relative_spread([7.0] * 6) == 0.0
    # [10, 10, 10, 40]: p25 at 0.75 → 10, p75 at 2.25 → 10 + 0.25 * 30 = 17.5, median 10: 0.75
    assert T.relative_spread([10, 40, 10, 10]) == pytest.approx(0.75)
    assert T.relative_spread([0.0, 0.0]) == 0.0


def test_busy_rule():
    assert not T.looks_busy([0.02, 0.25])  # at the limit: not yet busy
    assert T.looks_busy([0.02, 0.26])
    assert T.busy_warning([0.1, 0.05]) is None
    line = T.busy_warning([0.1, 0.8])
    assert "spread up to 80%" in line and "under 25%" in line and "idle machine" in line


def test_alternate_runs_a_b_a_b():
    order, ticks = [], iter(range(100))
    calls = [lambda: order.append("A"), lambda: order.append("B")]
    rounds = []
    seconds = T.alternate(calls, 3, on_round=lambda: rounds.append(len(order)), clock=lambda: next(ticks))
    assert order == ["A", "B", "A", "B", "A", "B"] and rounds == [2, 4, 6]
    assert seconds == [[1, 1, 1], [1, 1, 1]]  # each call lasts one clock tick


def test_benchmark_alternates_and_warns_when_busy(invoke, tmp_path, monkeypatch):
    """Two models: one round-by-round table with medians and spread; a made-up spread of 50 % on one
    model (a busy machine) prints the warning, a steady one does not."""
    import sfda_deploy.runtime.bench as bench

    ckpt, onnx_file = make_checkpoint(tmp_path / "tiny.safetensors"), make_onnx(tmp_path / "tiny.onnx")
    steady = [[0.010] * 4, [0.020] * 4]
    monkeypatch.setattr(bench, "alternate", lambda calls, rounds, on_round=None, clock=None: steady)
    result = invoke(["benchmark", "--compare", ckpt, onnx_file, "--warmup", 0, "--iters", 4])
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.output and "spread" in result.output and "warning" not in result.output
    assert "4 rounds of torch / onnxruntime in turn" in result.output
    busy = [[0.010, 0.010, 0.020, 0.020], [0.020] * 4]  # p25 10, p75 20, median 15 → 67 %
    monkeypatch.setattr(bench, "alternate", lambda calls, rounds, on_round=None, clock=None: busy)
    result = invoke(["benchmark", "--compare", ckpt, onnx_file, "--warmup", 0, "--iters", 4, "--name", "b"])
    assert "warning: timings spread up to 67%" in result.output
    rows = json.loads((tmp_path / "runs" / "benchmark" / "b" / "results.json").read_text())
    assert [(r["p50_ms"], r["spread_pct"], r["fps"]) for r in rows] == [(15.0, 66.67, 66.667), (20.0, 0.0, 50.0)]
