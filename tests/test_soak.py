"""The arithmetic of scripts/soak.py on tiny made-up windows (the soak itself is a benchmark, not a test)."""
from __future__ import annotations

import pytest
import torch

import scripts.soak as soak

W = soak.Window


def test_memory_growth_counts_from_the_end_of_the_warm_up():
    windows = [W(30, 10, 30, 100.0), W(60, 10, 30, 110.0), W(90, 10, 30, 112.0), W(120, 10, 30, 115.5)]
    assert soak.memory_growth(windows, 60) == pytest.approx(115.5 / 110.0 - 1)  # the first 100 MiB is warm-up
    assert soak.memory_growth(windows, 0) == pytest.approx(0.155)
    assert soak.memory_growth(windows, 120) is None  # no window after the base one


def test_fps_ratio_is_last_over_first():
    windows = [W(30, 300, 30.0, 1.0), W(60, 270, 30.0, 1.0), W(90, 280, 31.0, 1.0)]
    assert [w.fps for w in windows] == pytest.approx([10.0, 9.0, 280 / 31])
    assert soak.fps_ratio(windows) == pytest.approx(280 / 31 / 10)
    assert soak.fps_ratio(windows[:1]) is None


def test_only_full_rounds_are_compared_and_the_targets_judged():
    names = ("a", "b")
    rounds = {}
    for key, frames, hit in ((1, 2, True), (2, 2, False), (3, 1, True)):  # round 3 was cut by the deadline
        score = rounds.setdefault(key, soak.RoundScore(names))
        for _ in range(frames):
            label = torch.tensor([[0, 1]])
            score.update(label if hit else 1 - label, label)
    full = soak.round_mious(rounds, frames_per_round=2)
    assert full == [(1, 100.0), (2, 0.0)]
    windows = [W(30, 300, 30.0, 100.0), W(60, 260, 30.0, 104.0), W(90, 280, 30.0, 106.0)]
    checks = soak.check_targets(windows, 30, full, adapt=True)
    assert [(c["value"], c["ok"]) for c in checks] == [(6.0, False), (93.3, True), ([100.0, 0.0], False)]
    assert len(soak.check_targets(windows, 30, full, adapt=False)) == 2
    table = soak.format_table("none", windows, full, checks)
    assert "| 60 | 260 | 8.67 | 104.0 |  |" in table and "-> FAIL" in table and "-> PASS" in table


def test_a_long_list_of_rounds_is_cut_to_its_ends_and_range():
    few = [(1, 32.4), (2, 36.41)]
    assert soak.rounds_line(few) == "1: 32.40, 2: 36.41"
    many = [(k, 30.0 + k % 4) for k in range(1, 101)]
    line = soak.rounds_line(many, head=2, tail=1)
    assert line == "1: 31.00, 2: 32.00, …, 100: 30.00 (100 rounds, 30.00-33.00)"
