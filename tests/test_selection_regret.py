"""scripts/selection_regret.py on hand-made runs: Spearman, regret and shipped regret computed by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from scripts import selection_regret

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return selection_regret


def _point(it, im, snd, mix, miou, collapse=None):
    return {"stage": "A", "iter": it, "scores": {"im": im, "snd": snd, "mix": mix}, "miou": miou, "collapse": collapse}


def _run(path: Path, mious, source_miou, config: dict, stages: dict) -> None:
    """Three checkpoints: im ranks them 1 < 2 < 3, snd 3 > 2 > 1, mix 1 < 3 > 2; the last one collapsed."""
    points = [_point(10, 1.0, 3.0, 0.5, mious[0]), _point(20, 2.0, 2.0, 0.7, mious[1]),
              _point(30, 3.0, 1.0, 0.6, mious[2], collapse="class sky vanished")]
    selection = {"criterion": "im", "criteria": ["im", "snd", "mix"], "margin": 0.01, "fallback_enabled": True,
                 "reference": {"stage": "source", "iter": 0, "scores": {"im": 1.5, "snd": 2.5, "mix": 0.65},
                               "miou": source_miou},
                 "points": points}
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"before": {"miou": source_miou}, **stages, "selection": selection}))
    (path / "config.yaml").write_text(yaml.safe_dump(config))


def test_ranks_and_spearman_by_hand():
    m = _script()
    assert m.ranks([1, 2, 2, 3]) == [1, 2.5, 2.5, 4]
    assert m.spearman([1, 2, 3], [40, 50, 45]) == pytest.approx(0.5)   # ranks (1,2,3) vs (1,3,2): 1/2
    assert m.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert m.spearman([1, 2], [1, 2]) is None and m.spearman([1, 1, 1], [1, 2, 3]) is None


def test_regret_table_of_two_runs(tmp_path, capsys):
    m = _script()
    _run(tmp_path / "adapt" / "fog-atp", [40, 50, 45], 42,
         {"data_root": "/data/bench/fog", "method": "atp", "iters": 100, "propagate": False},
         {s: {"iters": 100} for s in "ATP"})
    _run(tmp_path / "compare" / "c" / "methods" / "ldbe", [30, 20, 25], 35,
         {"data_root": "/data/bench/night", "method": "ldbe", "iters": 50, "propagate": True},
         {s: {"iters": 50} for s in ("LD", "BE", "P")})
    out = tmp_path / "regret.json"
    assert m.main([str(tmp_path / "adapt"), str(tmp_path / "compare"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    fog, night = result["rows"]
    assert (fog["style"], fog["method"], fog["budget"]) == ("fog", "atp", "300")
    assert (night["style"], night["method"], night["budget"]) == ("night", "ldbe+P", "150")
    # fog: im picks A/30 (45 of the best 50), snd A/10 (40), mix A/20 (50)
    plain = lambda row, key: {c: v[key] for c, v in row["criteria"].items() if "|" not in c}  # noqa: E731
    assert plain(fog, "regret") == {"im": 5, "snd": 10, "mix": 0}
    assert plain(fog, "spearman") == pytest.approx({"im": 0.5, "snd": -0.5, "mix": 1.0})
    # shipped with fallback: im passes over the collapsed A/30 → A/20 (50); snd ships A/10 (2.5·1.01 < 3.0)
    assert plain(fog, "shipped_regret") == {"im": 0, "snd": 10, "mix": 0}
    # snd|im: snd picks A/10 (40), whose im 1.0 does not beat the source's 1.5 by 1 % → the source (42) ships
    assert fog["criteria"]["snd|im"]["regret"] == 10 and fog["criteria"]["snd|im"]["shipped_regret"] == 8
    # night: best checkpoint 30, source 35
    assert plain(night, "regret") == {"im": 5, "snd": 0, "mix": 10}
    assert plain(night, "shipped_regret") == {"im": 15, "snd": 5, "mix": 15}
    # snd|im on night: A/10 (30) fails the im guard → the source (35), the best there is: 0
    assert night["criteria"]["snd|im"]["shipped_regret"] == 0
    # im|snd: im passes over the collapsed A/30 to A/20, whose snd 2.0 < 2.5·1.01 → the source both times
    assert (fog["criteria"]["im|snd"]["shipped_regret"], night["criteria"]["im|snd"]["shipped_regret"]) == (8, 0)
    s = result["summary"]
    assert (s["im"]["median_regret"], s["im"]["worst_regret"], s["im"]["median_shipped_regret"]) == (5, 5, 7.5)
    assert (s["snd"]["median_regret"], s["snd"]["worst_regret"], s["snd"]["worst_shipped_regret"]) == (5, 10, 10)
    assert s["mix"]["mean_spearman"] == pytest.approx(0.0)  # +1 on fog, −1 on night
    assert result["lowest_worst_regret"] == "im"
    # worst shipped 8 (median 4) for im|snd, snd|im, mix|snd, snd|mix; im|snd's picks regret least (worst 5)
    assert s["snd|im"]["worst_shipped_regret"] == 8 and s["snd|im"]["median_shipped_regret"] == 4
    assert result["lowest_worst_shipped_regret"] == "im|snd"
    printed = capsys.readouterr().out
    assert "lowest worst-case regret: im" in printed and "ldbe+P" in printed


def test_no_run_with_labels_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no run with a selection record"):
        _script().main([str(tmp_path)])
