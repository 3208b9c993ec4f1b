"""``sfda-deploy compare`` on tiny data: sub-runs, report, chart, resume per method, bad input."""
from __future__ import annotations

import json

import pytest

from sfda_deploy.adapt.methods import METHODS
from sfda_deploy.commands import compare as C
from sfda_deploy.errors import SfdaError
from tests.conftest import assert_user_error
from tests.test_peer_methods import tiny_source
from tests.tiny_data import patch_datasets

# every registered adaptation method (atp joins when its branch lands)
AVAILABLE = [m for m in ("atp", "ldbe", "prsfda", "hiast", "cpsl") if m in METHODS]


def _args(tmp_path, source, methods, *extra):
    return ["compare", "--target", "cityscapes", "--data-root", tmp_path, "--source", source,
            "--methods", ",".join(methods), "--budget", 6, "--batch", 2, "--crop", 32, 32, "--workers", 0,
            "--name", "cmp", *extra]


@pytest.mark.slow  # end to end (seconds to a minute): left out by `make test-fast`
def test_compare_runs_every_method_and_resumes_per_method(invoke, monkeypatch, tmp_path):
    patch_datasets(monkeypatch, n=4, size=(40, 48))
    source = tiny_source(tmp_path)
    r = invoke(_args(tmp_path, source, AVAILABLE, "--oracle-miou", 90))
    assert r.exit_code == 0, r.output
    root = tmp_path / "runs" / "compare" / "cmp"
    results = json.loads((root / "results.json").read_text())
    assert list(results["methods"]) == ["adabn", *AVAILABLE]  # the AdaBN baseline, unasked, first
    src, base = results["source_only"]["miou"], results["methods"]["adabn"]["miou"]
    assert results["budget"]["iters_per_method"] == 6 and results["baseline"] == "adabn"
    for m, row in results["methods"].items():
        assert (root / "methods" / m / "model.safetensors").is_file()
        assert row["wall_s"] > 0
        if m == "adabn":  # no budget: one pass over the target images
            assert row["iters"] == 0 and row["it_per_s"] is None and row["gain_over_adabn"] == 0
        else:
            assert row["iters"] == 6 and row["it_per_s"] > 0  # the same budget for every method
            assert row["gain_over_adabn"] == pytest.approx(row["miou"] - base, abs=0.006)
        assert row["gap_closed"] == pytest.approx(100 * (row["miou"] - src) / (90 - src), abs=0.06)
        # the table's mIoU is the model the sub-run shipped (selected without labels), not its last iterate
        sel = json.loads((root / "methods" / m / "metrics.json").read_text())["selection"]
        where = ("source" if sel["shipped"]["reference"] else "AdaBN" if sel["shipped"].get("baseline")
                 else f"{sel['shipped']['stage']}/{sel['shipped']['iter']}")
        assert row["miou"] == sel["shipped"]["eval"]["miou"] and row["selected"].split(" ")[0] == where
        # "(fallback)" means one thing: the run's own training did not ship (AdaBN or the source did)
        shipped_other = bool(sel["shipped"]["reference"] or sel["shipped"].get("baseline"))
        assert row["selected"].endswith("(fallback)") == row["fallback"] == shipped_other
        assert row["selected"].endswith("(top rejected)") == (sel["fell_back"] and not shipped_other)
    report = (root / "report.md").read_text()
    assert "| source-only |" in report and "## Per-class IoU" in report and "| gain over AdaBN |" in report
    assert all(f"| {m} |" in report for m in ["adabn", *AVAILABLE])
    assert "| mIoU (shipped) | shipped | last-iterate mIoU |" in report
    assert (root / "compare.png").stat().st_size > 1000
    # issue 30: compare prints its table, and the report says what "(fallback)" means
    assert "| method | mIoU (shipped) | shipped |" in r.output and "| adabn |" in r.output
    assert "or the source on fallback" not in report and "`AdaBN (fallback)` / `source (fallback)`" in report
    assert "6 iterations per method in all (split evenly over its stages; AdaBN: none)" in report

    # resume: the finished methods are kept, a removed one is redone from scratch
    redo = AVAILABLE[-1]
    stamp = {m: (root / "methods" / m / "model.safetensors").stat().st_mtime_ns for m in ["adabn", *AVAILABLE]}
    (root / "methods" / redo / "model.safetensors").unlink()
    (root / "methods" / redo / "last.pt").unlink()
    r = invoke(["compare", "--resume", root])
    assert r.exit_code == 0, r.output
    assert "finished earlier, kept" in r.output
    for m in ["adabn", *AVAILABLE[:-1]]:
        assert (root / "methods" / m / "model.safetensors").stat().st_mtime_ns == stamp[m]
    assert (root / "methods" / redo / "model.safetensors").is_file()

    # the re-base script's entry point: the same figures as a dict (nothing left to run here)
    stamp = {m: (root / "methods" / m / "model.safetensors").stat().st_mtime_ns for m in ["adabn", *AVAILABLE]}
    again = C.compare_results(C.CompareConfig(resume=str(root)))
    assert again["run_dir"] == str(root) and list(again["methods"]) == ["adabn", *AVAILABLE]
    assert again == {"run_dir": str(root), **json.loads((root / "results.json").read_text())}
    for m, row in again["methods"].items():
        assert {"miou", "iou", "iters", "wall_s", "gain_over_adabn", "gap_closed"} <= set(row)
        assert len(row["iou"]) == 19
        assert (root / "methods" / m / "model.safetensors").stat().st_mtime_ns == stamp[m]  # none re-run


def test_compare_continues_an_interrupted_method(monkeypatch, tmp_path):
    # a method whose sub-run stopped after a checkpoint continues from its last.pt (adapt --resume)
    calls = []
    import sfda_deploy.commands.adapt as api

    monkeypatch.setattr(api, "run_adapt", lambda cfg, run_dir=None: calls.append((cfg.resume, run_dir)))
    root = tmp_path / "runs" / "compare" / "c"
    (root / "methods" / "ldbe").mkdir(parents=True)
    (root / "methods" / "ldbe" / "last.pt").write_bytes(b"x")
    (root / "config.yaml").write_text("methods: ldbe\nsource: s\ndata_root: d\n")
    with pytest.raises(SfdaError, match="did not finish"):
        C.run_compare(C.CompareConfig(resume=str(root)))  # the fake run writes no metrics
    # the AdaBN baseline, missing from this run, starts fresh; ldbe continues from its last.pt
    assert calls == [(None, root / "methods" / "adabn"), (str(root / "methods" / "ldbe"), None)]


def test_compare_unknown_method(invoke, monkeypatch, tmp_path):
    r = invoke(_args(tmp_path, tiny_source(tmp_path), ["ldbe", "cpls"]))
    assert_user_error(r, "unknown method 'cpls'", "cpsl")
    assert not (tmp_path / "runs" / "compare").exists()


def test_compare_resume_of_a_non_compare_dir(invoke, tmp_path):
    assert_user_error(invoke(["compare", "--resume", tmp_path]), "is not a resumable compare run")


def test_report_gain_over_adabn_by_hand():
    # source 30, AdaBN 35, atp 38.5, ldbe 33.25: gains −5.00 (source), 0.00, +3.50, −1.75; oracle 70 → gap closed
    # (35 − 30)/40 = 12.5 %, 21.2 % (8.5/40 = 21.25, rounded to one decimal), 8.1 % (3.25/40 = 8.125)
    iou = {"road": 50.0}
    rows = {"adabn": {"miou": 35.0, "iou": iou, "iters": 0, "it_per_s": None, "wall_s": 2.0, "selected": "BN/0",
                      "last_miou": 35.0},
            "atp": {"miou": 38.5, "iou": iou, "iters": 6, "it_per_s": 1.5, "wall_s": 4.0, "selected": "T/2",
                    "last_miou": 37.0},
            "ldbe": {"miou": 33.25, "iou": iou, "iters": 6, "it_per_s": 2.0, "wall_s": 3.0}}  # no selection record
    report = C.render_report(C.CompareConfig(iters=6, oracle_miou=70.0), rows, {"miou": 30.0, "iou": iou})
    assert "| source-only | 30.00 | - | - | 0.00 | -5.00 | 0.0 | 0 | - | - |" in report
    assert "| adabn | 35.00 | BN/0 | 35.00 | +5.00 | +0.00 | 12.5 | 0 | 2.0 | - |" in report
    assert "| atp | 38.50 | T/2 | 37.00 | +8.50 | +3.50 | 21.2 | 6 | 4.0 | 1.50 |" in report
    assert "| ldbe | 33.25 | last | - | +3.25 | -1.75 | 8.1 | 6 | 3.0 | 2.00 |" in report


def test_help_states_the_budget_rule_of_each_command(invoke):
    # issue 30 item 11: --iters is per stage everywhere; --budget is the total per method (compare, demo)
    words = {cmd: " ".join(invoke([cmd, "--help"]).output.split()) for cmd in ("adapt", "compare", "demo")}
    assert "--iters INTEGER Iterations PER STAGE" in words["adapt"]
    assert "--iters INTEGER Iterations PER STAGE of each method, as adapt's --iters" in words["compare"]
    assert "--budget INTEGER Iterations IN TOTAL per method, split evenly over its stages" in words["compare"]
    assert "--budget INTEGER ATP iterations IN TOTAL, split evenly over its stages A, T, P" in words["demo"]
    assert "--adapt-iters" not in words["demo"]  # the old name still runs, with a note, but is not offered


def test_compare_iters_is_per_stage_and_budget_in_all():
    from sfda_deploy.commands.compare import _adapt_config

    per_stage = C.CompareConfig(iters=5, source="s", data_root="d")
    total = C.CompareConfig(budget=30, source="s", data_root="d")
    assert _adapt_config(per_stage, "atp").iters == 5 and _adapt_config(per_stage, "ldbe").iters == 5
    assert _adapt_config(total, "atp").iters == 10 and _adapt_config(total, "ldbe").iters == 15
    with pytest.raises(SfdaError, match="--iters 5 .per stage. and --budget 30 .in all per method. both given"):
        C.check_budget(C.CompareConfig(iters=5, budget=30))


def test_an_old_compare_config_with_iters_gets_a_note_and_an_old_run_resumes_with_its_budget(invoke, tmp_path):
    (tmp_path / "old.yaml").write_text("iters: 6\nmethods: bogus\n")
    r = invoke(["compare", "--config", tmp_path / "old.yaml", "--source", "s", "--data-root", tmp_path])
    assert "sets iters: 6, which compare reads PER STAGE (as adapt does)" in r.output
    assert "write budget: 6 for that" in r.output
    root = tmp_path / "runs" / "compare" / "old"
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("methods: ldbe\nsource: s\ndata_root: d\niters: 6\n")
    cfg, _ = C._load_settings(C.CompareConfig(resume=str(root)))
    assert (cfg.budget, cfg.iters) == (6, None)


def test_gap_closed_by_hand():
    # source 30, oracle 70, method 50: (50 − 30)/(70 − 30) = 50 %
    assert C.gap_closed(50.0, 30.0, 70.0) == 50.0
    assert C.gap_closed(50.0, 30.0, None) is None and C.gap_closed(50.0, 30.0, 20.0) is None


def test_stage_iters_split_the_budget_by_hand():
    from sfda_deploy.commands.compare import stage_iters

    assert stage_iters(300, 3, "atp") == 100 and stage_iters(300, 2, "ldbe") == 150 and stage_iters(300, 1, "x") == 300
    assert stage_iters(301, 3, "atp") == 100  # floor: never more than the budget
    assert stage_iters(None, 3, "atp") is None
    with pytest.raises(SfdaError, match="--budget 2 is fewer than atp's 3 stages"):
        stage_iters(2, 3, "atp")
