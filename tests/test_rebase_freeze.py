"""scripts/rebase_benchmark.py: benchmark v3 is frozen before any method runs on a structured style."""
from __future__ import annotations

import re

import pytest

from scripts.rebase_benchmark import State, check_frozen, freeze
from sfda_deploy.data.synthetic import renderer_sha256


def _calibrated(state: State, style: str = "city2", adabn: float = 28.0) -> None:
    """Source-only 25 and an oracle of 55 (ratio 0.45); 16 classes at 20 IoU or more, one below, one absent."""
    state.put("source-only", {"real": {"miou": 30.0, "iou": {}}})
    state.put(f"source-only@{style}", {"miou": 25.0, "iou": {}})
    state.put(f"{style}@adabn", {"miou": adabn, "iou": {}})
    state.put(f"oracle@{style}", {"miou": 55.0, "iou": {**{f"c{i}": 20.0 + i for i in range(16)}, "low": 19.9,
                                                         "absent": None}})


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
    # AdaBN closes (28 − 25) / (55 − 25) = 10 % of the gap: at the edge, inside
    assert record["calibration"] == {"city2": {"source_only": 25.0, "adabn": 28.0, "oracle": 55.0, "ratio": 0.455,
                                               "adabn_share": 0.1, "classes_at_20": 16,
                                               "meets": {"ratio": True, "adabn_share": True, "classes": True}}}
    assert record["styles"] == ["city2"] and record["held_back"] == {}
    check_frozen(state, ["city2"])  # the same renderer: methods may run
    state.put("freeze", {**record, "renderer_sha256": "0" * 64})
    with pytest.raises(SystemExit, match="renderer changed since the freeze"):
        check_frozen(state)


def test_renderer_hash_covers_the_renderer_files():
    from sfda_deploy.data import synthetic

    assert len(renderer_sha256()) == 64
    assert set(synthetic.RENDERER_MODULES) >= {"synth_scene", "synth_shifts", "synth_styles", "synth_camera"}


def test_a_style_that_missed_a_target_is_held_back(tmp_path):
    """AdaBN at 40 closes (40 − 25) / (55 − 25) = 50 % of the gap, over the 40 % target: recorded, held back."""
    state = State(tmp_path)
    _calibrated(state, "city2")
    _calibrated(state, "suburb", adabn=40.0)
    record = freeze(state, ["city2", "suburb"])
    assert record["styles"] == ["city2"] and record["held_back"] == {"suburb": ["adabn_share"]}
    check_frozen(state, ["city2"])
    with pytest.raises(SystemExit, match="suburb is held back .*adabn_share"):
        check_frozen(state, ["city2", "suburb"])


def _render(root, style: str, content: bytes) -> None:
    (root / style / "val").mkdir(parents=True, exist_ok=True)
    (root / style / "val" / "0.png").write_bytes(content)


def test_a_later_freeze_keeps_a_frozen_style_only_if_its_files_are_unchanged(tmp_path, monkeypatch):
    """city2 is frozen; suburb is calibrated later on a new renderer. city2 keeps its freeze (and its time)
    while the new renderer draws its files byte for byte alike, and loses nothing silently when it does not."""
    from scripts.rebase_benchmark import style_data_sha256
    from sfda_deploy.data import synthetic

    state, first, second, changed = State(tmp_path / "state"), tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, city2 in ((first, b"city"), (second, b"city"), (changed, b"city, retuned")):
        _render(root, "city2", city2)
        _render(root, "suburb", b"suburb")
    assert style_data_sha256(first, "city2") == style_data_sha256(second, "city2") != style_data_sha256(changed,
                                                                                                          "city2")
    _calibrated(state, "city2")
    record = freeze(state, ["city2"], first)
    frozen_at = record["style_frozen_at"]["city2"]
    assert record["data_sha256"] == {"city2": style_data_sha256(first, "city2")}
    again = freeze(state, ["city2"], first)  # the same renderer: the freeze time stays
    assert again["frozen_at"] == record["frozen_at"] and again["style_frozen_at"]["city2"] == frozen_at

    monkeypatch.setattr(synthetic, "renderer_sha256", lambda: "1" * 64)  # a style added: a new renderer
    with pytest.raises(SystemExit, match="city2's files are not the frozen ones"):
        check_frozen(state, ["city2"], changed)
    check_frozen(state, ["city2"], second)  # the same files: methods may still run on city2
    _calibrated(state, "suburb")
    with pytest.raises(SystemExit, match="city2 was frozen at .* draws its files differently"):
        freeze(state, ["suburb"], changed)
    record = freeze(state, ["suburb"], second)
    assert record["styles"] == ["city2", "suburb"] and record["style_frozen_at"]["city2"] == frozen_at
    assert record["calibration"]["city2"]["oracle"] == 55.0 and set(record["data_sha256"]) == {"city2", "suburb"}
    check_frozen(state, ["city2", "suburb"], second)


def test_a_freeze_from_before_per_style_records_still_guards(tmp_path, monkeypatch):
    """A record written before the freeze kept data hashes (no ``style_frozen_at``, no ``data_sha256``): a new
    renderer cannot prove the frozen style's files unchanged, so a later freeze refuses with one line."""
    from sfda_deploy.data import synthetic

    state, data = State(tmp_path / "state"), tmp_path / "data"
    _render(data, "city2", b"city")
    _calibrated(state, "city2")
    record = freeze(state, ["city2"])
    state.put("freeze", {k: v for k, v in record.items() if k not in ("style_frozen_at", "data_sha256")})
    monkeypatch.setattr(synthetic, "renderer_sha256", lambda: "1" * 64)
    _calibrated(state, "suburb")
    with pytest.raises(SystemExit, match="city2 was frozen at " + re.escape(record["frozen_at"])):
        freeze(state, ["suburb"], data)


def test_a_later_freeze_keeps_an_earlier_held_back_record(tmp_path, monkeypatch):
    """suburb was held back at the first freeze; a style added later (a new renderer) leaves that verdict and its
    figures on record, and suburb stays refused."""
    from sfda_deploy.data import synthetic

    state, data = State(tmp_path / "state"), tmp_path / "data"
    for style in ("city2", "suburb", "night-city"):
        _render(data, style, style.encode())
    _calibrated(state, "city2")
    _calibrated(state, "suburb", adabn=40.0)
    first = freeze(state, ["city2", "suburb"], data)
    monkeypatch.setattr(synthetic, "renderer_sha256", lambda: "1" * 64)
    _calibrated(state, "night-city")
    record = freeze(state, ["night-city"], data)
    assert record["styles"] == ["city2", "night-city"] and record["held_back"] == {"suburb": ["adabn_share"]}
    assert record["calibration"]["suburb"] == first["calibration"]["suburb"]
    assert record["style_frozen_at"]["city2"] == first["style_frozen_at"]["city2"]
    with pytest.raises(SystemExit, match="suburb is held back"):
        check_frozen(state, ["suburb"], data)


def test_method_runs_pin_the_rebase_rule_whatever_the_package_default():
    """The re-base's runs ship by the rule every earlier run shipped by (``im`` ranks and judges, better-of
    fallback), not by the package's current default; the budget is split over the stages, +P adds stage P."""
    from pathlib import Path

    from scripts.rebase_benchmark import method_config, parser
    from sfda_deploy.config import AdaptConfig

    args = parser().parse_args(["--data", "data/x"])
    cfg = method_config(args, Path("src.safetensors"), "city2", "cpsl+P", 0)
    assert (cfg.select_by, cfg.fallback_by, cfg.fallback_to, cfg.baseline) == ("im", "im", "better", "adabn")
    assert AdaptConfig().fallback_to == "adabn" and AdaptConfig().select_by != "im"  # the default moved on
    assert cfg.method == "cpsl" and cfg.propagate and cfg.data_root == str(Path("data/x/city2"))
    assert cfg.name == "rebase-city2-cpsl-P"
    adabn = method_config(args, Path("src.safetensors"), "city2", "adabn", 1)
    assert adabn.iters is None and adabn.batch is None and adabn.seed == 1  # AdaBN trains nothing
