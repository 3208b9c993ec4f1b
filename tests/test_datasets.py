"""Every dataset layout on tiny generated fixtures: the item contract, the label maps, layout errors,
corrupt files (see tests/fixtures_data.py for the fixtures' raw label bands)."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sfda_deploy.data import build_dataset, is_labelled
from sfda_deploy.data.base import CorruptImageError
from sfda_deploy.errors import SfdaError
from tests import fixtures_data as fx

# Expected class index per band (cityscapes19) for each layout's raw ids, written out by hand:
# Cityscapes labelIds 7 road→0, 26 car→13, 0 unlabeled→255, 33 bicycle→18, 24 person→11, 21 vegetation→8.
CITYSCAPES_EXPECTED = (0, 13, 255, 18, 11, 8)
# SYNTHIA ids (docs/models.md) 3 road→0, 8 car→13, 0 void→255, 11 bicycle→18, 16 terrain→9, 300 (none)→255.
SYNTHIA_EXPECTED = (0, 13, 255, 18, 9, 255)
# BDD100K trainIds map to themselves; 255 stays ignore.
BDD_EXPECTED = (0, 13, 255, 18, 11, 8)

LAYOUTS = {
    # target: (writer(root) -> root, split, items, expected bands)
    "cityscapes": (lambda r: fx.write_cityscapes(r, n=2), "val", 2, CITYSCAPES_EXPECTED),
    "gta5": (lambda r: fx.write_gta5(r, n=3), "train", 3, CITYSCAPES_EXPECTED),
    "gta5-palette": (lambda r: fx.write_gta5(r, n=2, palette=True), "train", 2, CITYSCAPES_EXPECTED),  # as published
    "synthia": (lambda r: fx.write_synthia(r, n=3), "train", 3, SYNTHIA_EXPECTED),
    "acdc": (lambda r: fx.write_acdc(r), "val", 2, CITYSCAPES_EXPECTED),
    "acdc-fog": (lambda r: fx.write_acdc(r), "val", 1, CITYSCAPES_EXPECTED),
    "bdd100k": (lambda r: fx.write_bdd100k(r, n=2), "val", 2, BDD_EXPECTED),
}


def _check_item(item, index, labelled):
    h, w = fx.SIZE
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, h, w)
    assert item["index"] == index and isinstance(item["name"], str)
    if labelled:
        assert item["label"].dtype == torch.int64 and item["label"].shape == (h, w)
    else:
        assert "label" not in item


@pytest.mark.parametrize("target", list(LAYOUTS))
def test_labelled_layouts(tmp_path, target):
    write, split, n, expected = LAYOUTS[target]
    root = write(tmp_path / target)
    target = target.removesuffix("-palette")
    ds = build_dataset(target, root, split)
    assert len(ds) == n and is_labelled(target)
    for i in range(n):
        item = ds[i]
        _check_item(item, i, labelled=True)
        assert torch.equal(item["label"], torch.from_numpy(fx.bands(expected).astype(np.int64)))
        for k, value in enumerate(expected):  # known pixels, spelled out
            r, c = fx.band_pixel(k, len(expected))
            assert int(item["label"][r, c]) == value
    batch = next(iter(DataLoader(ds, batch_size=n)))  # default collate works on the contract's items
    assert batch["image"].shape == (n, 3, *fx.SIZE) and batch["label"].shape == (n, *fx.SIZE)


def test_images_are_rgb_and_named_by_stem(tmp_path):
    root = fx.write_cityscapes(tmp_path / "cs", n=2)
    ds = build_dataset("cityscapes", root, "val")
    item = ds[1]
    assert torch.equal(item["image"], torch.from_numpy(fx.rgb(1)).permute(2, 0, 1))  # RGB, not cv2's BGR
    assert item["name"] == "aachen_000001_000019_leftImg8bit"
    assert [it["index"] for it in ds] == [0, 1]  # plain iteration ends (IndexError past the end)
    with pytest.raises(IndexError):
        ds[2]


def test_cityscapes_labelids_follow_cityscapesscripts(tmp_path):
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    ids = [lab.id for lab in labels.labels if 0 <= lab.id < 34]
    size = (4, 3 * len(ids))
    root = fx.write_cityscapes(tmp_path / "cs", n=1, ids=ids, size=size)
    got = build_dataset("cityscapes", root, "val")[0]["label"]
    for k, label_id in enumerate(ids):
        r, c = fx.band_pixel(k, len(ids), size)
        train_id = labels.id2label[label_id].trainId
        assert int(got[r, c]) == (train_id if 0 <= train_id < 19 else 255), labels.id2label[label_id].name


def test_synthia_reads_16bit_class_plane_not_instances(tmp_path):
    root = fx.write_synthia(tmp_path / "syn", n=1)
    raw = cv2.imread(str(root / "GT" / "LABELS" / "0000000.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (*fx.SIZE, 3)  # the fixture is what SYNTHIA ships
    label = build_dataset("synthia", root, "train")[0]["label"]
    assert int(label[fx.band_pixel(1, 6)]) == 13  # id 8 (car), not the instance id 7 (→ sign)


def test_class_subsets_drop_classes(tmp_path):
    # synthia16 = trainIds without 9 terrain, 14 truck, 16 train: car (13) is index 12, bicycle (18) 15.
    root = fx.write_synthia(tmp_path / "syn", n=1)
    label = build_dataset("synthia", root, "train", class_set="synthia16")[0]["label"]
    assert [int(label[fx.band_pixel(k, 6)]) for k in range(6)] == [0, 12, 255, 15, 255, 255]
    # synthia13 = trainIds 0,1,2,6,7,8,10,11,12,13,15,17,18: car (13) is index 9, bicycle (18) index 12.
    label = build_dataset("synthia", root, "train", class_set="synthia13")[0]["label"]
    assert [int(label[fx.band_pixel(k, 6)]) for k in range(6)] == [0, 9, 255, 12, 255, 255]


def test_acdc_skips_reference_images_and_selects_condition(tmp_path):
    root = fx.write_acdc(tmp_path / "acdc")
    names = [ds_item["name"] for ds_item in build_dataset("acdc", root, "val")]
    assert names == ["GOPR0000_frame_000000_rgb_anon", "GOPR0001_frame_000001_rgb_anon"]
    assert [it["name"] for it in build_dataset("acdc-night", root, "val")] == ["GOPR0001_frame_000001_rgb_anon"]
    with pytest.raises(SfdaError, match="rgb_anon/snow/val"):
        build_dataset("acdc-snow", root, "val")


def test_split_lists_for_layouts_without_split_folders(tmp_path):
    root = fx.write_gta5(tmp_path / "gta", n=3)
    with pytest.raises(SfdaError, match="val.txt"):
        build_dataset("gta5", root, "val")
    (root / "val.txt").write_text("00002.png\n00003\n")
    assert [it["name"] for it in build_dataset("gta5", root, "val")] == ["00002", "00003"]


def test_folder_is_recursive_and_unlabelled(tmp_path):
    root = fx.write_folder(tmp_path / "frames", n=3)
    ds = build_dataset("folder", root, "ignored")
    assert len(ds) == 3 and not is_labelled("folder")
    for i in range(3):
        _check_item(ds[i], i, labelled=False)
    assert sorted(it["name"] for it in ds) == ["frame_000", "frame_001", "frame_002"]


def test_video_frames_with_stride(tmp_path):
    path = fx.write_video(tmp_path / "clip.avi", frames=6)
    ds = build_dataset("video", path, "ignored", stride=2)
    assert len(ds) == 3
    for i in (0, 2, 1):  # out of order: a seek
        item = ds[i]
        _check_item(item, i, labelled=False)
        assert item["name"] == f"clip_{2 * i:06d}"
        assert abs(item["image"].float().mean().item() - 80 * i) < 6  # frame 2i is grey 40*2i (MJPG lossy)
    assert len(build_dataset("video", path, "x", max_frames=2)) == 2


# ---- wrong layouts: SfdaError naming what was expected where --------------------------------------
@pytest.mark.parametrize("target,expected", [
    ("cityscapes", "leftImg8bit/val/*/*_leftImg8bit.png"),
    ("gta5", "images/*.png"),
    ("synthia", "RGB/*.png"),
    ("acdc", "rgb_anon/*/val/*/*_rgb_anon.png"),
    ("bdd100k", "images/10k/val/*.jpg"),
    ("folder", "images"),
])
def test_wrong_layout_names_expected_path(tmp_path, target, expected):
    root = fx.write_gta5(tmp_path / "gta", n=1) if target != "gta5" else fx.write_folder(tmp_path / "f")
    if target == "folder":
        root = tmp_path / "empty"
        root.mkdir()
    with pytest.raises(SfdaError) as e:
        build_dataset(target, root, "val")
    msg = str(e.value)
    assert str(root) in msg and expected in msg and "\n" not in msg


def test_missing_root_and_missing_labels(tmp_path):
    with pytest.raises(SfdaError, match="needs --data-root"):
        build_dataset("cityscapes", None, "val")
    with pytest.raises(SfdaError, match="does not exist"):
        build_dataset("cityscapes", tmp_path / "nowhere", "val")
    root = fx.write_cityscapes(tmp_path / "cs", n=1)
    label = next((root / "gtFine").rglob("*.png"))
    label.unlink()
    with pytest.raises(SfdaError, match=f"expected {label}"):
        build_dataset("cityscapes", root, "val")


def test_unknown_target_suggests():
    with pytest.raises(SfdaError, match="did you mean 'cityscapes'"):
        build_dataset("citiscapes", "x", "val")


def test_video_errors(tmp_path):
    with pytest.raises(SfdaError, match="is a folder"):
        build_dataset("video", tmp_path, "x")
    bad = fx.corrupt(tmp_path / "clip.mp4")
    with pytest.raises(SfdaError, match="cannot open video"):
        build_dataset("video", bad, "x")


def test_colour_labels_and_size_mismatch_are_clear(tmp_path):
    root = fx.write_cityscapes(tmp_path / "cs", n=1)
    label = next((root / "gtFine").rglob("*.png"))
    fx.write_raw(label, np.zeros((*fx.SIZE, 3), np.uint8))  # a *_color.png saved under the labelIds name
    with pytest.raises(SfdaError, match="3 channels"):
        build_dataset("cityscapes", root, "val")[0]
    fx.write_raw(label, np.zeros((8, 8), np.uint8))
    with pytest.raises(SfdaError, match="do not belong"):
        build_dataset("cityscapes", root, "val")[0]


# ---- corrupt files: a clear failure by default, skip + warn + count on request ----------------------
def test_corrupt_image_fails_clearly_by_default(tmp_path):
    root = fx.write_gta5(tmp_path / "gta", n=3)
    bad = fx.corrupt(root / "images" / "00002.png")
    ds = build_dataset("gta5", root, "train")
    assert ds[0]["name"] == "00001"  # decoding is lazy: the other files still load
    with pytest.raises(CorruptImageError, match=f"cannot decode image {bad}"):
        ds[1]


def test_corrupt_files_skipped_with_warning_and_count(tmp_path):
    root = fx.write_gta5(tmp_path / "gta", n=3)
    fx.corrupt(root / "images" / "00002.png")
    fx.corrupt(root / "labels" / "00003.png")
    ds = build_dataset("gta5", root, "train", skip_corrupt=True)
    with pytest.warns(UserWarning, match="skipping unreadable file"):
        item = ds[1]
    assert item["name"] == "00001"  # 00002 (image) and 00003 (label) are unreadable: wraps around
    assert len(ds.corrupt) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each file warns once
        ds[1]
    assert len(ds.corrupt) == 2


def test_all_corrupt_is_an_error(tmp_path):
    root = fx.write_folder(tmp_path / "f", n=2)
    for p in root.rglob("frame_*"):
        fx.corrupt(p)
    ds = build_dataset("folder", root, "x", skip_corrupt=True)
    with pytest.warns(UserWarning), pytest.raises(SfdaError, match="no readable image"):
        ds[0]
