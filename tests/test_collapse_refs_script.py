"""scripts/collapse_refs.py on hand-made step files: good checkpoints lost, collapses caught and what ships, by hand."""
from __future__ import annotations

import json
from pathlib import Path

import scripts.collapse_refs as m

SOURCE_SHARES = [0.50, 0.30, 0.15, 0.05]  # "truck" (class 3) on 5 %: a confident error of the source
ADABN_SHARES = [0.55, 0.30, 0.14, 0.01]


def _source(shares):
    return {"stage": "source", "iter": 0, "scores": {"im": 1.0, "snd": 5.0, "mix": 0.4}, "miou": 30.0,
            "shares": shares, "collapse": None}


def _pt(it, im, miou, shares, stage="T"):
    return {"stage": stage, "iter": it, "scores": {"im": im, "snd": 5.0, "mix": 0.4}, "miou": miou, "shares": shares,
            "collapse": None}


def _write(d: Path, name: str, points, source_shares):
    sel = {"criterion": "im", "margin": 0.01, "fallback_enabled": True, "reference": _source(source_shares),
           "points": points}
    (d / f"{name}.json").write_text(json.dumps({"selection": sel, "device": "cpu"}))


def test_references_by_hand(tmp_path, capsys):
    d = tmp_path / "steps"
    d.mkdir()
    # style s1 (dev): AdaBN 35 mIoU, im 1.2 (floor: snd ≥ 4.85; every point keeps it)
    _write(d, "s1@adabn", [_pt(0, 1.2, 35.0, ADABN_SHARES, stage="BN")], SOURCE_SHARES)
    _write(d, "s1@atp", [_pt(1, 1.3, 40.0, [0.50, 0.30, 0.15, 0.05]),     # good, no collapse anywhere
                         _pt(2, 1.6, 45.0, [0.56, 0.30, 0.139, 0.001]),   # good; truck "vanished" at the source
                         _pt(3, 1.1, 20.0, [1.0, 0.0, 0.0, 0.0])],        # destroyed: below the source's 30
           SOURCE_SHARES)
    # style s2 (held out): an old step file without shares
    _write(d, "s2@adabn", [_pt(0, 1.2, 35.0, None, stage="BN")], None)
    _write(d, "s2@cpsl", [_pt(1, 1.5, 38.0, None)], None)
    runs = m.load_runs([d])
    atp = next(r for r in runs if r["name"] == "s1@atp")
    # source: flagged T/2 (good: lost) and T/3 (below the source: caught); IM ships T/1 (1.3 > 1.212): 40,
    # the best of (40, 45, 20, source 30, AdaBN 35) is 45 → regret 5
    j = m.judge_run(atp, "source")
    assert (j["good"], j["good_lost"], j["flagged"], j["caught"], j["regret"]) == (2, 1, 2, 1, 5.0)
    for reference in ("adabn", "agree"):  # truck is not present with AdaBN (1 % < 2 %): only T/3 is flagged
        j = m.judge_run(atp, reference)
        assert (j["good"], j["good_lost"], j["flagged"], j["caught"], j["regret"]) == (2, 0, 1, 1, 0.0)
    cpsl = next(r for r in runs if r["name"] == "s2@cpsl")
    assert m.judge_run(cpsl, "source")["regret"] == 0.0  # its recorded verdicts replay the source reference
    assert m.judge_run(cpsl, "adabn") == {"replayable": False, "points": 1}

    assert m.main([str(d), "--dev-styles", "s1", "--held-out-styles", "s2", "--out", str(tmp_path / "r.json")]) == 0
    out = json.loads((tmp_path / "r.json").read_text())
    assert set(out) == {"dev", "held out"}
    dev = out["dev"]
    assert (dev["source"]["all"]["good_lost"], dev["adabn"]["all"]["good_lost"]) == (1, 0)
    assert dev["agree"]["styles"]["s1"]["caught"] == 1 and dev["source"]["all"]["worst_regret"] == 5.0
    held = out["held out"]
    assert (held["source"]["all"]["runs"], held["adabn"]["all"]["runs"], held["adabn"]["all"]["not_replayable"]) \
        == (1, 0, 1)
    printed = capsys.readouterr().out
    assert "adabn: 1 of 2 runs (3 of 4 scored points) replayable" in printed
    assert "source: 2 of 2 runs (4 of 4 scored points) replayable" in printed
