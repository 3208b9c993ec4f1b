"""``sfda-deploy demo`` end to end on a tiny budget, with the bundled source model."""
from __future__ import annotations

import json

import pytest

from sfda_deploy.demo import BUNDLED_MODEL
from sfda_deploy.data.synthetic import STYLES
from tests.conftest import assert_user_error


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled model not built (see README: Bundled model)")
def test_demo_prints_source_only_table(invoke, tmp_path):
    r = invoke(["demo", "--images", 2, "--size", 64, 128, "--seed", 1])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "source-only" in out
    header = next(line for line in out.splitlines() if line.startswith("class"))
    assert header.split()[1:] == list(STYLES)
    assert any(line.startswith("mIoU") for line in out.splitlines())
    run = tmp_path / "runs" / "demo" / "demo"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["source-only"]) == set(STYLES)
    for res in metrics["source-only"].values():
        assert 0 <= res["miou"] <= 100 and len(res["iou"]) == 19
    assert (run / "table.txt").read_text().count("mIoU") == 1
    assert (run / "data" / "synthetic.json").is_file()
    # a second run never overwrites the first
    assert invoke(["demo", "--images", 1, "--size", 64, 128]).exit_code == 0
    assert (tmp_path / "runs" / "demo" / "demo-2" / "metrics.json").is_file()


def test_demo_bad_inputs(invoke, tmp_path):
    assert_user_error(invoke(["demo", "--model", tmp_path / "none.safetensors"]), "none.safetensors", "--model")
    if BUNDLED_MODEL.is_file():
        assert_user_error(invoke(["demo", "--images", 0]), "--images is 0")
        assert_user_error(invoke(["demo", "--images", 1, "--size", 8, 8]), "too small")
