"""Benchmark v3's structured shift knobs: layout, camera, materials, local light (``data/synth_shifts.py``)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sfda_deploy.data import synth_geometry as G
from sfda_deploy.data import synth_shifts as SH
from sfda_deploy.data.synth_camera import real_linear
from sfda_deploy.data.synth_scene import render_scene
from sfda_deploy.data.synth_styles import (
    CALIBRATED,
    CALIBRATED_LOOK,
    FAMILY,
    STRESS,
    STRUCTURED,
    STRUCTURED_SPECS,
    STYLES,
    scene_knobs,
)
from sfda_deploy.data.synthetic import render_sample

SIZE = (64, 128)
# The appearance and stress styles as benchmark v2 rendered them (main before v3): seed 0, train and val scenes
# 0-2 at 64x128, the shared label then each style's image, hashed in that order.
V2_SHA256 = "7f410bbe552fdd865d739b3e6716a3b251c24dbc610598c27ac682ad9a1efacb"
V2_STYLES = ("source", *CALIBRATED, *STRESS)


def test_appearance_and_stress_styles_unchanged_bit_for_bit():
    h = hashlib.sha256()
    for split in ("train", "val"):
        for i in range(3):
            out = render_sample(0, split, i, SIZE, STYLES)  # all styles at once: the new ones must not disturb them
            h.update(out["source"][0].tobytes())
            for s in V2_STYLES:
                assert np.array_equal(out[s][0], out["source"][0])
                h.update(out[s][1].tobytes())
    assert h.hexdigest() == V2_SHA256


def test_every_style_has_a_family_and_the_structured_ones_a_spec():
    assert set(FAMILY) == set(STYLES)
    assert {s for s, f in FAMILY.items() if f == "structured"} == set(STRUCTURED) == set(STRUCTURED_SPECS)
    assert all(FAMILY[s] == "appearance" for s in CALIBRATED) and all(FAMILY[s] == "stress" for s in STRESS)


@pytest.mark.parametrize("style", STRUCTURED)
def test_structured_styles_are_deterministic_from_the_seed(style):
    a = render_sample(5, "val", 1, SIZE, (style,))[style]
    b = render_sample(5, "val", 1, SIZE, (style,))[style]
    c = render_sample(6, "val", 1, SIZE, (style,))[style]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("style", STRUCTURED)
def test_structured_labels_are_the_scene_drawn_with_the_style_knobs(style):
    """The label is the geometry's: the scene drawn with the style's layout and camera, whatever the materials
    and light; a style with the source's knobs shares the source scene's label exactly."""
    label = render_sample(3, "train", 2, SIZE, (style,))[style][0]
    layout, rig = scene_knobs(style)
    if (layout, rig) == scene_knobs("source"):
        expected = render_sample(3, "train", 2, SIZE, ("source",))["source"][0]
    else:
        owner = next(t for t in STYLES if scene_knobs(t) == (layout, rig))  # newtown-worn: newtown's street
        key = [3, 0, 2, 1 + STYLES.index(owner), 0]
        expected = render_scene(np.random.default_rng(key), *SIZE, layout, rig)["label"]
    assert np.array_equal(label, expected)


def test_defaults_draw_the_source_scene():
    a = render_scene(np.random.default_rng([1, 2, 3]), *SIZE)
    b = render_scene(np.random.default_rng([1, 2, 3]), *SIZE, SH.SOURCE_LAYOUT, SH.SOURCE_RIG)
    for k in ("label", "material", "tint", "depth"):
        assert np.array_equal(a[k], b[k])


# ---- camera -----------------------------------------------------------------------------------------------------
def test_distortion_zero_is_the_identity_and_keeps_the_corners():
    maps = {"label": np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)}
    assert SH.distort(maps, 0.0) is maps
    warped = SH.distort(maps, 0.3)["label"]
    for y, x in ((0, 0), (0, 15), (11, 0), (11, 15)):
        assert warped[y, x] == maps["label"][y, x]


def test_distortion_magnifies_the_centre_and_moves_label_material_together():
    """Barrel: an output pixel at radius r samples r(1+kr²)/(1+k) < r, so the centre is magnified; every map is
    warped with the same nearest-neighbour sampling, so no (label, material) pair appears that was not there."""
    H, W = 41, 61
    yy, xx = np.mgrid[0:H, 0:W]
    ring = np.hypot(yy - 20, xx - 30) <= 6
    label = np.where(ring, 26, 7).astype(np.uint8)
    material = np.where(ring, G.M_CAR, G.M_ROAD).astype(np.uint8)
    out = SH.distort({"label": label, "material": material}, 0.3)
    assert (out["label"] == 26).sum() > ring.sum() * 1.2  # the central disc grew
    pairs_before = set(zip(label.ravel(), material.ravel()))
    assert set(zip(out["label"].ravel(), out["material"].ravel())) <= pairs_before
    # Hand-computed sample point: output (row 20, col 30 + 20) → r = 20/hypot(20, 30); source column
    # 30 + 20 (1 + 0.3 r²)/1.3, rounded.
    r = 20 / np.hypot(20, 30)
    src_col = int(np.floor(30 + 20 * (1 + 0.3 * r * r) / 1.3 + 0.5))
    probe = {"x": np.tile(np.arange(W, dtype=np.float32), (H, 1))}
    assert int(SH.distort(probe, 0.3)["x"][20, 50]) == src_col


def test_rig_moves_the_horizon():
    def horizon_rows(rig):
        rows = []
        for i in range(8):
            label = render_scene(np.random.default_rng([i]), 96, 192, SH.SOURCE_LAYOUT, rig)["label"]
            rows.append(int(np.argmax((label == G.ROAD).any(1))))  # the road's far end: just below the horizon
        return np.median(rows) / 96

    low, high = horizon_rows(SH.Rig(horizon=(0.28, 0.3))), horizon_rows(SH.Rig(horizon=(0.58, 0.6)))
    assert low < 0.4 < high


# ---- layout -----------------------------------------------------------------------------------------------------
def _class_share(layout, classes, n=10):
    shares = []
    for i in range(n):
        label = render_scene(np.random.default_rng([i, 9]), 96, 192, layout)["label"]
        shares.append(np.isin(label, classes).mean())
    return float(np.mean(shares))


def test_layouts_change_class_frequencies():
    green = (G.VEGETATION, G.TERRAIN)
    assert _class_share(SH.SUBURB, green) > 1.3 * _class_share(SH.SOURCE_LAYOUT, green)
    assert _class_share(SH.SUBURB, (G.BUILDING,)) < 0.8 * _class_share(SH.SOURCE_LAYOUT, (G.BUILDING,))
    heavy = (G.TRUCK, G.BUS)
    assert _class_share(SH.ARTERIAL, heavy) > 1.5 * _class_share(SH.SOURCE_LAYOUT, heavy)


# ---- materials --------------------------------------------------------------------------------------------------
def _scene():
    return render_scene(np.random.default_rng([4, 4]), 96, 192)


@pytest.mark.parametrize("materials", [SH.OLD_TOWN, SH.AUTUMN, SH.CONCRETE_SUBURB])
def test_materials_change_only_their_own_materials(materials):
    """Class-conditional: with the same random draws, the pixels of materials a set does not name are unchanged."""
    scene = _scene()
    plain = real_linear(scene, np.random.default_rng(1), CALIBRATED_LOOK)
    changed = real_linear(scene, np.random.default_rng(1), CALIBRATED_LOOK, materials)
    named = set(materials.colour) | set(materials.instances) | set(materials.mix) | set(materials.pattern)
    touched = np.isin(scene["material"], list(named))
    assert np.array_equal(plain[~touched], changed[~touched])
    assert np.abs(plain[touched] - changed[touched]).mean() > 0.02


def test_instance_colours_come_from_the_set():
    scene = _scene()
    base = np.zeros((G.NUM_MATERIALS, 3), np.float32)
    tints = np.ones((256, 3), np.float32)
    mix = np.zeros(G.NUM_MATERIALS, np.float32)
    only = SH.Materials(instances={G.M_CAR: ((255, 0, 0), (0, 0, 255))}, mix={G.M_CAR: 1.0})
    colour = SH.material_albedo(scene, base, tints, mix, only)
    cars = scene["material"] == G.M_CAR
    assert cars.any()
    expected = np.where((scene["tint"][cars] % 2 == 0)[:, None], [1.0, 0, 0], [0, 0, 1.0])
    np.testing.assert_allclose(colour[cars], expected)
    assert np.all(colour[~cars] == 0)


def test_pattern_cells_and_joints_by_hand():
    pattern = SH.Pattern(period=(1.0, 1.0), joint=0.2, staggered=True)
    u = np.array([0.5, 0.5, 0.05, 0.5, 0.5])
    v = np.array([0.5, 1.5, 0.5, 1.95, 2.5])
    col, row, joint = SH._cells(u, v, pattern)
    # Row 1 is shifted by half a cell: u = 0.5 → 1.0 → column 1, on the joint (fraction 0).
    assert row.tolist() == [0, 1, 0, 1, 2]
    assert col.tolist() == [0, 1, 0, 1, 0]
    assert joint.tolist() == [False, True, True, True, False]


def test_surface_coordinates_of_the_ground_are_the_camera_geometry():
    scene = _scene()
    cam = scene["camera"]
    u, v, footprint = SH.surface_coords(scene, scene["material"])
    road = scene["material"] == G.M_ROAD
    rows, cols = np.nonzero(road)
    z = scene["depth"][rows, cols]
    lateral = (cols + 0.5 - cam["vx"]) * z / cam["f"] + cam["cam_x"] - cam["k"] * z * z
    np.testing.assert_allclose(u[rows, cols], lateral, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(v[rows, cols], z, rtol=1e-6)
    np.testing.assert_allclose(footprint[rows, cols], z / cam["f"], rtol=1e-6)


@pytest.mark.parametrize("style", STRUCTURED)
def test_a_style_renders_the_same_alone_or_among_others(style):
    """A style's files do not depend on which other styles are generated with it (a calibration renders a few
    styles, the re-base all of them, and the oracle trained on the first must be the second's): newtown-worn shares
    newtown's street whether newtown is asked for or not."""
    alone = render_sample(2, "val", 0, SIZE, ("source", style))[style]
    among = render_sample(2, "val", 0, SIZE, STYLES)[style]
    assert np.array_equal(alone[0], among[0]) and np.array_equal(alone[1], among[1])
