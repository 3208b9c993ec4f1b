"""``sfda-deploy demo`` end to end on a tiny budget, with the bundled source model."""
from __future__ import annotations

import json

import pytest

from sfda_deploy.assets import BUNDLED_MODEL
from sfda_deploy.data.synthetic import STYLES
from tests.conftest import assert_user_error

pytestmark = pytest.mark.slow  # the whole demo, end to end: left out by `make test-fast`


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled model not built (see README: Bundled model)")
def test_demo_prints_source_only_table(invoke, tmp_path):
    r = invoke(["demo", "--images", 2, "--size", 64, 128, "--seed", 1, "--budget", 0])
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
    assert invoke(["demo", "--images", 1, "--size", 64, 128, "--budget", 0]).exit_code == 0
    assert (tmp_path / "runs" / "demo" / "demo-2" / "metrics.json").is_file()


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled model not built (see README: Bundled model)")
def test_demo_adapts_with_atp_and_prints_before_after(invoke, tmp_path):
    r = invoke(["demo", "--images", 4, "--size", 64, 128, "--budget", 6, "--style", "fog"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "demo" / "demo"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"source-only", "ATP (fog)"} and set(metrics["ATP (fog)"]) == {"fog"}
    before, after = metrics["source-only"]["fog"]["miou"], metrics["ATP (fog)"]["fog"]["miou"]
    adapted = json.loads((run / "adapt" / "metrics.json").read_text())
    # issue 30 item 4: source-only → AdaBN → what ATP shipped, in one line
    from sfda_deploy.adapt.shipped import progression

    adabn = adapted["selection"]["baseline"]["miou"]
    line = progression("ATP", before, adabn, after, adapted["selection"])
    assert f"mIoU on fog val: {line}" in r.output and f"AdaBN {adabn:.1f}" in line
    assert [s for s in "ATP" if s in adapted] == ["A", "T", "P"]  # 6 iterations = 2 per stage
    assert (run / "adapt" / "model.safetensors").is_file()
    # issue 19 item 14: everything under the demo's run directory, listed at the end with the next commands
    for f in ("table.txt", "confusion_source-only.png", "confusion_atp-fog.png", "export/model.onnx",
              "export/report.json", "segment/overlay.mp4", "segment/legend.png", "adapt/losses.png",
              "adapt/selection.png"):
        assert (run / f).is_file(), f
    assert set(p.name for p in (tmp_path / "runs").iterdir()) == {"demo"}
    tail = r.output[r.output.index(f"the demo wrote everything under {run}:"):]
    for word in ("tables", "plots", "model", "ONNX", "video", "next", "selection.png",
                 f"segment {run / 'fog_val.mp4'} --model {run / 'export' / 'model.onnx'}"):
        assert word in tail, word


def test_demo_bad_inputs(invoke, tmp_path):
    assert_user_error(invoke(["demo", "--model", tmp_path / "none.safetensors"]), "none.safetensors", "--model")
    if BUNDLED_MODEL.is_file():
        assert_user_error(invoke(["demo", "--images", 0]), "--images 0 is not allowed: use an integer >= 1")
        assert_user_error(invoke(["demo", "--images", 1, "--size", 8, 8]), "too small")
        assert_user_error(invoke(["demo", "--images", 1, "--style", "source"]), "--style source", "real")
