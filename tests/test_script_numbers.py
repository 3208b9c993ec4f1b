"""The numbers of the scripts behind shipped defaults, on tiny made-up inputs computed by hand:
``drive_benchmark`` (its table chose ``bn_momentum`` 0.01: docs/benchmark.md) and ``rebase_benchmark``'s
selection block of a step file (what docs/benchmark.md's tables and docs/selection_regret.json are replayed from)."""
from __future__ import annotations

import json

import pytest

from scripts import drive_benchmark, rebase_benchmark


def _summary(per_condition: dict, per_round: dict, per_round_condition: dict, overall: float, fps: float,
             adaptation: dict | None = None) -> dict:
    s = {"scores": {"overall": {"miou": overall}, "per_condition": per_condition, "per_round": per_round,
                    "per_round_condition": per_round_condition}, "fps_end_to_end": fps}
    return s | ({"adaptation": adaptation} if adaptation else {})


def test_drive_benchmark_cells_checks_and_table(monkeypatch, tmp_path):
    # two conditions, rounds 1 and 2 ("10" sorts after "2" as text: rounds are ordered as numbers)
    base = _summary({"real": 50.0, "fog": 30.0}, {"1": 38.0, "2": 40.0, "10": 41.0},
                    {"10/real": 52.0, "10/fog": 31.0}, 40.0, 20.0)
    adapted = _summary({"real": 51.0, "fog": 36.0}, {"1": 39.0, "2": 44.0, "10": 45.5},
                       {"10/real": 51.5, "10/fog": 37.0}, 43.5, 15.0, {"updates": 12, "resets": 1})
    runs = iter([base, adapted])

    def fake_segment(cfg):
        out = tmp_path / cfg.name
        out.mkdir()
        (out / "summary.json").write_text(json.dumps(next(runs)))
        return out

    monkeypatch.setattr(drive_benchmark, "run_segment", fake_segment)

    class Args:
        device, threads, adapt_every, name = "cpu", 1, 8, "t"

    row0 = drive_benchmark.run_cell(Args, tmp_path, tmp_path / "m.safetensors", None, "source")
    row1 = drive_benchmark.run_cell(Args, tmp_path, tmp_path / "m.safetensors", "bnstats", "source")
    assert (row0["method"], row0["round_first"], row0["round_last"], row0["last_round"]) == ("none", 38.0, 41.0, "10")
    assert (row1["updates"], row1["resets"], row1["fps"]) == (12, 1, 15.0)
    c = drive_benchmark.checks(row1, row0, ["real", "fog"])
    # gain 43.5 − 40 = 3.5; worst condition of the last round: real 51.5 − 52 = −0.5 (fog +6);
    # last − first round 45.5 − 39 = 6.5; fps 15 / 20 = 0.75
    assert c == {"gain": 3.5, "worst_condition_last_round": -0.5, "last_minus_first": 6.5, "fps_ratio": 0.75}
    row1["checks"] = c
    lines = drive_benchmark.table([row0, row1], ["real", "fog"]).splitlines()
    assert lines[2] == "| source | none | 50.0 | 30.0 | 40.0 | 38.0 | 41.0 | 0 | 20.0 | – | – | – | – |"
    assert lines[3] == "| source | bnstats | 51.0 | 36.0 | 43.5 | 39.0 | 45.5 | 1 | 15.0 | +3.50 | -0.50 | +6.50 | 0.75 |"


@pytest.mark.parametrize("names", ["today", "before the rename"])
def test_rebase_step_block_keeps_benchmark_v3s_names(tmp_path, names):
    point = {"stage": "T", "iter": 100, "scores": {"im": 1.5}, "miou": 40.0, "collapse": None, "shares": [0.5, 0.5],
             "drift": 0.1, "file": "x"}
    settings = ({"select_by": "im", "fallback_margin": 0.02, "fallback": False} if names == "today"
                else {"criterion": "im", "margin": 0.02, "fallback_enabled": False})
    record = {**settings, "fallback_by": "snd", "floor_by": ["snd"], "floor_tolerance": 0.03, "floor_sticky": True,
              "collapse_ref": "agree", "reference": {**point, "stage": "source", "iter": 0, "marginal": [0.5, 0.5]},
              "baseline": None, "points": [point], "shipped": {"stage": "T"}}
    (tmp_path / "metrics.json").write_text(json.dumps({"selection": record}))
    block = rebase_benchmark.selection_points(tmp_path)
    brief = {k: point[k] for k in ("stage", "iter", "scores", "miou", "collapse", "shares")}
    assert block == {"criterion": "im", "fallback_by": "snd", "margin": 0.02, "fallback_enabled": False,
                     "floor_by": ["snd"], "floor_tolerance": 0.03, "floor_sticky": True, "collapse_ref": "agree",
                     "reference": {**brief, "stage": "source", "iter": 0}, "baseline": None, "points": [brief]}
