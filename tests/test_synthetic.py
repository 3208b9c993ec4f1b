"""The built-in synthetic benchmark: determinism, shared labels, Cityscapes read-back, bad flags."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sfda_deploy.classes import get_class_set
from sfda_deploy.data import build_dataset
from sfda_deploy.data.synth_scene import render_scene
from sfda_deploy.data.synth_styles import STYLES
from sfda_deploy.data.synthetic import generate, render_sample
from tests.conftest import assert_user_error

SIZE = (48, 96)
SPLITS = {"train": 2, "val": 2}


def _digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("synth") / "b", STYLES, SPLITS, SIZE, seed=3, progress=False)


def test_deterministic_from_seed(bench, tmp_path):
    again = generate(tmp_path / "again", STYLES, SPLITS, SIZE, seed=3, progress=False)
    first = _digests(bench)
    assert len(first) == len(STYLES) * 2 * (2 + 2)  # styles × (image, label) × images
    assert _digests(again) == first
    other = generate(tmp_path / "other", STYLES, SPLITS, SIZE, seed=4, progress=False)
    assert _digests(other) != first


def test_styles_share_labels_exactly_and_differ_in_appearance(bench):
    """Styles drawn with the source's street and camera share the source's labels; structured styles with their
    own layout or camera have their own (tests/test_synth_shifts.py)."""
    from sfda_deploy.data.synth_styles import scene_knobs

    shared = [s for s in STYLES if scene_knobs(s) == scene_knobs("source")]
    assert len(shared) >= 7
    for split in SPLITS:
        for i in range(SPLITS[split]):
            labels = [(bench / s / "gtFine" / split / "synth" / f"synth_{i:06d}_000019_gtFine_labelIds.png").read_bytes()
                      for s in shared]
            assert all(lab == labels[0] for lab in labels)
            images = {(bench / s / "leftImg8bit" / split / "synth" / f"synth_{i:06d}_000019_leftImg8bit.png").read_bytes()
                      for s in STYLES}
            assert len(images) == len(STYLES)


def test_readable_as_cityscapes(bench):
    cs = get_class_set("cityscapes19")
    for style in STYLES:
        ds = build_dataset("cityscapes", bench / style, "val")
        assert len(ds) == 2
        item = ds[0]
        assert tuple(item["image"].shape) == (3, *SIZE) and tuple(item["label"].shape) == SIZE
        values = set(item["label"].unique().tolist())
        assert values <= set(range(cs.num_classes)) | {255}
        assert len(values - {255}) >= 4  # road, sky, buildings, ... are all there


def test_scenes_cover_most_classes():
    cs = get_class_set("cityscapes19")
    seen = set()
    for i in range(12):
        label, _ = render_sample(0, "train", i, (128, 256), ("source",))["source"]
        seen |= set(np.unique(cs.labelid_lut()[label]).tolist())
    seen.discard(255)
    # all 19 but train are drawn; 12 small scenes show at least 16 of them
    assert len(seen) >= 16, sorted(seen)


def test_reuse_same_settings_and_refuse_other(bench):
    before = _digests(bench)
    assert generate(bench, STYLES, SPLITS, SIZE, seed=3, progress=False) == bench
    assert _digests(bench) == before
    with pytest.raises(Exception, match="other settings"):
        generate(bench, STYLES, SPLITS, SIZE, seed=5, progress=False)


def test_cli_generates(invoke, tmp_path):
    out = tmp_path / "cli"
    r = invoke(["generate-data", "--out", out, "--styles", "source,fog", "--train", 1, "--val", 1,
                "--size", 32, 64, "--seed", 1])
    assert r.exit_code == 0, r.output
    assert f"--data-root {out / 'fog'}" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["fog", "source", "synthetic.json"]
    assert len(build_dataset("cityscapes", out / "source", "train")) == 1


@pytest.mark.parametrize("args, fragments", [
    (["--styles", "source,fgo"], ["unknown style 'fgo'", "fog"]),
    (["--styles", ","], ["no style given"]),
    (["--train", "-1"], ["--train -1 is not allowed: use an integer >= 0"]),
    (["--train", "0", "--val", "0"], ["nothing to generate"]),
    (["--size", "16", "16"], ["too small"]),
    (["--size", "64"], ["--size"]),
])
def test_cli_bad_flags(invoke, tmp_path, args, fragments):
    r = invoke(["generate-data", "--out", tmp_path / "x", "--train", 1, "--val", 1, "--size", 32, 64, *args])
    assert_user_error(r, *fragments)
    assert not (tmp_path / "x").exists()


def test_cli_bad_out(invoke, tmp_path, bench):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = invoke(["generate-data", "--out", blocker / "sub", "--train", 1, "--val", 0, "--size", 32, 64])
    assert_user_error(r, "cannot", "--out")
    r = invoke(["generate-data", "--out", bench, "--train", 1, "--val", 0, "--size", 32, 64])
    assert_user_error(r, "other settings", "new output directory")


def test_every_family_is_generated(bench):
    from sfda_deploy.data.synth_styles import CALIBRATED, STRESS, STRUCTURED

    assert set(CALIBRATED) | set(STRESS) | set(STRUCTURED) | {"source"} == set(STYLES)
    assert {"fog-dense", "night-dark", "rain"} <= set(STYLES)
    for style in STYLES:
        assert len(list((bench / style / "leftImg8bit" / "val").rglob("*.png"))) == SPLITS["val"]


def test_stress_styles_are_harsher_than_their_calibrated_forms():
    # Same scene, same random stream: in denser fog what stands 40 m away and beyond is nearer the fog's own
    # grey (the airlight); the dark night is darker.
    scene = render_scene(np.random.default_rng(0), 128, 256)
    from sfda_deploy.data.synth_styles import render_style

    def look(style):
        return render_style(scene, style, np.random.default_rng(1)).astype(np.float32)

    far = (scene["depth"] > 40) & (scene["depth"] < 1000)
    assert far.sum() > 500
    airlight = np.float32([0.78, 0.80, 0.82]) * 255
    assert np.abs(look("fog-dense")[far] - airlight).mean() < 0.6 * np.abs(look("fog")[far] - airlight).mean()
    assert look("night-dark").mean() < look("night").mean()


def test_generate_data_defaults_to_every_style():
    from sfda_deploy.config import GenerateDataConfig
    from sfda_deploy.data.synth_styles import STYLES

    assert GenerateDataConfig().styles.split(",") == list(STYLES)
