"""scripts/rebase_benchmark.py: benchmark v3 is frozen before any method runs on a structured style."""
from __future__ import annotations

import pytest

from scripts.rebase_benchmark import State, check_frozen, freeze
from sfda_deploy.data.synthetic import renderer_sha256


def _calibrated(state: State, style: str = "city2") -> None:
    state.put("source-only", {"real": {"miou": 30.0, "iou": {}}})
    state.put(f"source-only@{style}", {"miou": 25.0, "iou": {}})
    state.put(f"{style}@adabn", {"miou": 28.0, "iou": {}})
    state.put(f"oracle@{style}", {"miou": 55.0, "iou": {}})


def test_freeze_needs_the_training_free_numbers(tmp_path):
    state = State(tmp_path)
    with pytest.raises(SystemExit, match="city2 lacks"):
        freeze(state, ["real", "city2"])
    with pytest.raises(SystemExit, match="not frozen"):
        check_frozen(state)


def test_freeze_records_the_renderer_and_guards_it(tmp_path):
    state = State(tmp_path)
    _calibrated(state)
    record = freeze(state, ["real", "city2"])
    assert record["renderer_sha256"] == renderer_sha256() and record["manifest_version"] == 5
    assert record["calibration"] == {"city2": {"source_only": 25.0, "adabn": 28.0, "oracle": 55.0}}
    check_frozen(state)  # the same renderer: methods may run
    state.put("freeze", {**record, "renderer_sha256": "0" * 64})
    with pytest.raises(SystemExit, match="renderer changed since the freeze"):
        check_frozen(state)


def test_renderer_hash_covers_the_renderer_files():
    from sfda_deploy.data import synthetic

    assert len(renderer_sha256()) == 64
    assert set(synthetic.RENDERER_MODULES) >= {"synth_scene", "synth_shifts", "synth_styles", "synth_camera"}
