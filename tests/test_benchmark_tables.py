"""scripts/benchmark_tables.py: the re-base's figures (gap closed, gain over AdaBN, seed noise) by hand."""
from __future__ import annotations

import pytest

from scripts.benchmark_tables import MARK_BEGIN, MARK_END, collect, gap_closed, render, replace_block, seed_noise


def test_gap_closed_by_hand():
    assert gap_closed(30.0, 20.0, 40.0) == 50.0      # (30 − 20) / (40 − 20)
    assert gap_closed(15.0, 20.0, 40.0) == -25.0     # below source-only: negative
    assert gap_closed(30.0, 40.0, 40.0) is None      # no gap to close


def test_seed_noise_by_hand():
    # atp: 10, 12, 14 → mean 12, sample variance (4 + 0 + 4) / 2 = 4, std 2; adabn: 5, 5 → std 0
    n = seed_noise({"atp": [10.0, 12.0, 14.0], "adabn": [5.0, 5.0]})
    assert n["methods"]["atp"]["std"] == 2.0 and n["methods"]["atp"]["range"] == 4.0
    assert n["methods"]["adabn"]["std"] == 0.0
    assert n["threshold"] == 4.0                      # twice the largest std


def _iou(road, sky):
    return {"road": road, "sky": sky}


def _steps():
    return {
        "source-only": {"source": {"miou": 80.0, "iou": _iou(90.0, 70.0)},
                        "real": {"miou": 20.0, "iou": _iou(30.0, 10.0)},
                        "fog-dense": {"miou": 10.0, "iou": _iou(15.0, 5.0)}},
        "oracle@real": {"miou": 40.0, "iou": _iou(60.0, 20.0), "wall_s": 100.0},
        "real@adabn": {"miou": 25.0, "iou": _iou(35.0, 15.0), "iters": 0, "wall_s": 5.0},
        "real@atp": {"miou": 30.0, "iou": _iou(56.0, 4.0), "iters": 300, "wall_s": 50.0},
        "fog-dense@atp": {"miou": 8.0, "iou": _iou(14.0, 2.0), "iters": 300, "wall_s": 50.0},
        "noise@real@atp@seed1": {"miou": 32.0, "iou": {}, "wall_s": 50.0},
        "noise@real@atp@seed2": {"miou": 28.0, "iou": {}, "wall_s": 50.0},
        "wall": {"seconds": 400.0},
    }


def test_collect_by_hand():
    doc = collect(_steps(), ["real", "fog-dense"], ["real"], {"noise_style": "real"})
    real = doc["styles"]["real"]
    assert real["kind"] == "calibrated" and real["ratio"] == 0.5            # 20 / 40
    assert real["measurable_classes"] == ["road", "sky"]                     # oracle 60 and 20 (≥ 20)
    atp = real["methods"]["atp"]
    assert atp["gap_closed"] == 50.0 and atp["gain_over_adabn"] == 5.0      # (30−20)/(40−20); 30 − 25
    assert atp["classes_lost"] == {"sky": -6.0}                              # 4 < 10 − 5; road gained
    assert not atp["below_source_only"]
    dense = doc["styles"]["fog-dense"]
    assert dense["kind"] == "stress" and dense["oracle"] is None
    assert dense["methods"]["atp"]["below_source_only"] and dense["methods"]["atp"]["gap_closed"] is None
    # the seed-0 run is the main one: 30, 32, 28 → std 2
    assert doc["seed_noise"]["methods"]["atp"]["mious"] == [30.0, 32.0, 28.0]
    assert doc["seed_noise"]["threshold"] == 4.0
    assert doc["wall_s"] == {"sum_of_steps": 305.0, "elapsed": 400.0}  # 100 + 5 + 4 × 50
    assert doc["source_val_miou"] == 80.0
    assert real["family"] == "appearance" and real["adabn_gap_closed"] == 25.0


def test_structured_styles_and_late_source_only_steps():
    steps = {**_steps(), "source-only@city2": {"miou": 30.0, "iou": {"road": 50.0, "sky": 10.0}},
             "oracle@city2": {"miou": 60.0, "iou": {"road": 80.0, "sky": 40.0}},
             "city2@adabn": {"miou": 33.0, "iou": {"road": 55.0, "sky": 11.0}},
             "freeze": {"renderer_sha256": "ab" * 32, "manifest_version": 5, "frozen_at": "2026-12-07T14:00:00+00:00",
                        "calibration": {}}}
    doc = collect(steps, ["real", "city2"], ["real"], {"noise_style": "real", "structured": ["city2"]})
    city2 = doc["styles"]["city2"]
    assert city2["kind"] == "structured" and city2["family"] == "structured"
    assert city2["ratio"] == 0.5 and city2["adabn_gap_closed"] == 10.0     # 30/60; (33 − 30)/(60 − 30)
    assert doc["renderer"]["frozen_at"].startswith("2026-12-07")
    assert "Renderer frozen at 2026-12-07T14:00:00+00:00" in render(doc)


def test_render_marks_below_source_and_names_the_threshold():
    text = render(collect(_steps(), ["real", "fog-dense"], ["real"], {"noise_style": "real"}))
    # AdaBN 25 closes (25 − 20) / (40 − 20) = 25 % of the gap
    assert "| real | appearance | 20.0 | 25.0 | 40.0 | 0.500 | 25 % | 2 |" in text
    assert "30.0 (50 %, +5.0)" in text and "**8.0**" in text
    assert "real / atp: sky -6.0" in text and "above **4.0 mIoU**" in text


@pytest.mark.parametrize("text", ["# Benchmarks\n\n## Runtime\nold\n",
                                  f"# Benchmarks\n{MARK_BEGIN}\nold tables\n{MARK_END}\n## Runtime\nkept\n"])
def test_replace_block_keeps_the_rest(text):
    out = replace_block(text, "new\n")
    assert out.startswith("# Benchmarks\n") and f"{MARK_BEGIN}\nnew\n{MARK_END}" in out
    assert "old tables" not in out and "## Runtime" in out
    assert replace_block(out, "newer\n").count(MARK_BEGIN) == 1


def test_write_docs_from_step_files(tmp_path):
    import json

    from scripts.benchmark_tables import write_docs

    state = tmp_path / "steps"
    state.mkdir()
    for name, value in {**_steps(), "settings": {"styles": ["real", "fog-dense"], "calibrated": ["real"],
                                                 "noise_style": "real"}}.items():
        (state / f"{name}.json").write_text(json.dumps(value))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmark.md").write_text("# Benchmarks\n\n## Runtime\nkept\n")
    md = write_docs(state, docs)
    doc = json.loads((docs / "benchmark.json").read_text())
    assert doc["styles"]["real"]["methods"]["atp"]["gain_over_adabn"] == 5.0
    assert "## Runtime\nkept" in md.read_text() and "| real | appearance |" in md.read_text()
    # another budget: its own block and JSON, the budget-free steps (source-only, oracle, AdaBN) from the base
    long = tmp_path / "steps900"
    long.mkdir()
    (long / "settings.json").write_text(json.dumps({"styles": ["real"], "calibrated": ["real"],
                                                    "budget_iters_per_method": 900}))
    (long / "real@atp.json").write_text(json.dumps({"miou": 36.0, "iou": _iou(60.0, 12.0), "iters": 900,
                                                    "wall_s": 70.0}))
    write_docs(long, docs, base=state, name="rebase900")
    doc = json.loads((docs / "benchmark_rebase900.json").read_text())
    assert doc["styles"]["real"]["methods"]["atp"]["gain_over_adabn"] == 11.0      # 36 − the base's AdaBN 25
    assert doc["styles"]["real"]["methods"]["atp"]["gap_closed"] == 80.0           # (36 − 20) / (40 − 20)
    assert doc["wall_s"]["sum_of_steps"] == 70.0                                    # its own steps only
    text = md.read_text()
    assert text.count("<!-- rebase900:begin -->") == 1 and "## Benchmark v2 at 900 iterations" in text
    assert json.loads((docs / "benchmark.json").read_text())["styles"]["real"]["methods"]["atp"]["miou"] == 30.0


def _sel(points, ref_im=1.0):
    return {"margin": 0.01, "fallback_enabled": True, "points": points,
            "reference": {"stage": "source", "iter": 0, "scores": {"im": ref_im, "snd": 5.0, "mix": 0.4}, "miou": 20.0}}


def _p(stage, it, im, snd, miou):
    return {"stage": stage, "iter": it, "scores": {"im": im, "snd": snd, "mix": 0.4}, "miou": miou, "collapse": None}


def test_rule_outcomes_take_the_baseline_from_the_adabn_run():
    from scripts.benchmark_tables import rule_outcomes

    adabn = _sel([_p("BN", 0, 1.2, 5.0, 25.0)])
    # T/1: im 1.4 > 1.2 · 1.01, snd 4.9 (keeps AdaBN's floor, 4.85) → ships 27; T/2: top IM 2.0 but snd 4.0
    run = _sel([_p("T", 1, 1.4, 4.9, 27.0), _p("T", 2, 2.0, 4.0, 18.0)])
    out = rule_outcomes(run, adabn)
    assert out["default_rule_miou"] == 27.0 and out["default_rule_ships"] == "T/1" and out["default_rule_fallback"]
    assert out["best_checkpoint_miou"] == 27.0 and "floor snd 3%" in out["default_rule"]
    # nothing keeps the floor: AdaBN ships
    assert rule_outcomes(_sel([_p("T", 1, 2.0, 4.0, 18.0)]), adabn)["default_rule_ships"] == "adabn"
    # the AdaBN run scored another sample (its source scores differ): no baseline, the source rule → T/2
    other = rule_outcomes(run, _sel([_p("BN", 0, 1.2, 5.0, 25.0)], ref_im=1.1))
    assert other["default_rule_ships"] == "T/2" and other["default_rule_miou"] == 18.0


def test_structured_record_by_hand():
    from scripts.benchmark_tables import regret, structured_record

    # shipped 31, best checkpoint 36, AdaBN 33, source 30: ceiling 36 → regret 5
    assert regret({"default_rule_miou": 31.0, "best_checkpoint_miou": 36.0}, 30.0, 33.0) == 5.0
    # a run whose checkpoints all lie under AdaBN: the ceiling is AdaBN, shipping AdaBN costs nothing
    assert regret({"default_rule_miou": 33.0, "best_checkpoint_miou": 32.0}, 30.0, 33.0) == 0.0
    st = {"city2": {"family": "structured", "source_only": {"miou": 30.0}, "methods": {
              "adabn": {"miou": 33.0},
              "atp": {"default_rule_miou": 31.0, "best_checkpoint_miou": 36.0},
              "cpsl": {"default_rule_miou": 29.0, "best_checkpoint_miou": 40.0}}},
          "real": {"family": "appearance", "source_only": {"miou": 20.0}, "methods": {
              "atp": {"default_rule_miou": 10.0, "best_checkpoint_miou": 50.0}}}}
    rec = structured_record(st, ["city2", "real"], "default_rule")
    assert list(rec["styles"]) == ["city2"] and rec["runs"] == 2       # the appearance style is not in it
    city2 = rec["styles"]["city2"]
    assert city2["below_source_only"] == ["cpsl"]                       # 29 < 30
    assert city2["shipped_minus_adabn"] == {"atp": -2.0, "cpsl": -4.0}
    assert city2["ceiling"] == {"method": "cpsl", "miou": 40.0, "over_adabn": 7.0}
    assert city2["regret"] == {"atp": 5.0, "cpsl": 11.0}
    assert rec["median_regret"] == 8.0 and rec["worst_regret"] == 11.0
    # another rule's figures (issue 25's held-out rule: the default key) are read from their own fields
    st["city2"]["methods"]["atp"]["held_out_rule_miou"] = 36.0
    held_out = structured_record(st, ["city2", "real"])
    assert held_out["runs"] == 1 and held_out["styles"]["city2"]["regret"] == {"atp": 0.0}


def test_seed_noise_per_style():
    steps = {**_steps(), "suburb@atp": {"miou": 40.0, "iou": {}}, "noise@suburb@atp@seed1": {"miou": 41.0, "iou": {}},
             "noise@suburb@atp@seed2": {"miou": 39.0, "iou": {}}}
    doc = collect(steps, ["real"], ["real"], {"noise_style": "real"})
    assert doc["seed_noise"]["methods"]["atp"]["mious"] == [30.0, 32.0, 28.0]     # real's runs only
    suburb = doc["seed_noise_other_styles"]["suburb"]
    assert suburb["methods"]["atp"]["mious"] == [40.0, 41.0, 39.0] and suburb["threshold"] == 2.0  # 2 × std 1
    assert "on `suburb` counts only above **2.0 mIoU**" in render(doc)


def test_another_budget_borrows_the_budget_free_steps(tmp_path):
    """A 900-iteration state holds only its method runs: source-only (the combined step and the per-style ones
    added later), oracles and AdaBN come from the base; its own steps and its wall time stay its own."""
    import json

    from scripts.benchmark_tables import load_steps

    base, other = tmp_path / "base", tmp_path / "900"
    base.mkdir()
    other.mkdir()
    for name, value in {"source-only": {"real": {"miou": 30.0}}, "source-only@city2": {"miou": 32.0},
                        "oracle@city2": {"miou": 60.0}, "city2@adabn": {"miou": 40.0}, "city2@atp": {"miou": 41.0},
                        "wall": {"seconds": 5.0}}.items():
        (base / f"{name}.json").write_text(json.dumps(value))
    (other / "city2@atp.json").write_text(json.dumps({"miou": 38.0}))
    steps = load_steps(other, base)
    assert steps["source-only@city2"] == {"miou": 32.0} and steps["oracle@city2"] == {"miou": 60.0}
    assert steps["city2@adabn"] == {"miou": 40.0} and steps["city2@atp"] == {"miou": 38.0}
    assert "wall" not in steps and steps["source-only"] == {"real": {"miou": 30.0}}


def test_block_title_names_the_benchmarks_its_styles_belong_to():
    from scripts.benchmark_tables import benchmarks_named

    assert benchmarks_named({"real": {"family": "appearance"}, "fog-dense": {"family": "stress"}}) == "Benchmark v2"
    assert benchmarks_named({"city2": {"family": "structured"}}) == "Benchmark v3"
    assert benchmarks_named({"real": {"family": "appearance"}, "city2": {"family": "structured"}}) == \
        "Benchmarks v2 and v3"
