"""Class sets, metadata, run directories, config merging, the model registry and checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sfda_deploy.checkpoint import load_model, save_checkpoint
from sfda_deploy.classes import CLASS_SETS, get_class_set
from sfda_deploy.config import AdaptConfig
from sfda_deploy.config_build import build_config
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from sfda_deploy.runs import finish_run, new_run_dir, write_json


def test_class_sets_match_cityscapesscripts():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    by_train = {lab.trainId: lab for lab in labels.labels if 0 <= lab.trainId < 19}
    cs = get_class_set("cityscapes19")
    for i in range(19):
        assert cs.names[i] == by_train[i].name
        assert cs.label_ids[i] == by_train[i].id
        assert tuple(cs.palette[i]) == tuple(by_train[i].color)
    lut = cs.labelid_lut()
    for lab in labels.labels:
        if 0 <= lab.id < 256:
            expected = lab.trainId if 0 <= lab.trainId < 19 else 255
            assert lut[lab.id] == expected, lab.name


def test_synthia_subsets():
    assert CLASS_SETS["synthia16"].num_classes == 16
    assert CLASS_SETS["synthia13"].num_classes == 13
    assert "terrain" not in CLASS_SETS["synthia16"].names
    assert "pole" not in CLASS_SETS["synthia13"].names


def test_unknown_class_set_suggests():
    with pytest.raises(SfdaError, match="did you mean 'cityscapes19'"):
        get_class_set("cityscape19")


def test_metadata_roundtrip_and_normalize():
    meta = ModelMeta(arch="tiny", channel_order="BGR", mean=(1.0, 2.0, 3.0), std=(1.0, 1.0, 2.0))
    again = ModelMeta.from_json(meta.to_json())
    assert again == meta
    # a record that does not state its input convention is refused, never filled with ImageNet defaults
    partial = {k: v for k, v in meta.to_dict().items() if k not in ("mean", "channel_order")}
    with pytest.raises(SfdaError, match="lacks mean, channel_order: re-export it"):
        ModelMeta.from_dict(partial, "x.onnx")
    img = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)  # RGB
    out = meta.normalize(img).flatten().tolist()
    assert out == [29.0, 18.0, 3.5]  # BGR: (30-1)/1, (20-2)/1, (10-3)/2
    np_out = meta.normalize_numpy(np.array([[[[10, 20, 30]]]], np.uint8)).flatten().tolist()
    assert np_out == out


def test_run_dirs_never_overwrite(tmp_path):
    a = new_run_dir("adapt", "x", root=tmp_path)
    b = new_run_dir("adapt", "x", root=tmp_path)
    assert a.name == "x" and b.name == "x-2"
    write_json(a / "m.json", {"v": 1})
    assert json.loads((a / "m.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in a.iterdir()) == ["INCOMPLETE", "m.json"]  # no temp file left behind
    finish_run(a)  # the mark written first goes last
    assert [p.name for p in a.iterdir()] == ["m.json"]


def test_config_precedence_and_unknown_key():
    cfg = build_config(AdaptConfig, {"iters": 10, "crop": [64, 64]}, {"iters": 20})
    assert cfg.iters == 20 and cfg.crop == (64, 64)
    with pytest.raises(SfdaError, match="did you mean 'iters'"):
        build_config(AdaptConfig, {"iter": 1}, {})


def test_registry_suggests_closest():
    with pytest.raises(SfdaError, match="did you mean 'tiny'"):
        build_model("tiyn")


def test_tiny_forward_shape():
    model = build_model("tiny", num_classes=5).eval()
    x = torch.randn(2, 3, 37, 50)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (2, 5, 37, 50)
    assert feats.shape[1] == model.feature_channels


def test_checkpoint_roundtrip(tmp_path):
    model = build_model("tiny", num_classes=19).eval()
    meta = ModelMeta(arch="tiny", input_size=(64, 128)).with_provenance(command="test")
    path = save_checkpoint(tmp_path / "model.safetensors", model, meta)
    loaded, meta2 = load_model(path)
    assert meta2 == meta
    x = torch.randn(1, 3, 64, 128)
    assert torch.equal(loaded(x), model(x))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(SfdaError, match="does not exist"):
        load_model(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(SfdaError, match="not a readable safetensors"):
        load_model(bad)
    model = build_model("tiny", num_classes=19)
    good = save_checkpoint(tmp_path / "good.safetensors", model, ModelMeta(arch="tiny"))
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(SfdaError, match="truncated"):
        load_model(truncated)
    wrong = save_checkpoint(tmp_path / "wrong.safetensors", model, ModelMeta(arch="tiny", num_classes=5))
    with pytest.raises(SfdaError, match="does not fit the model"):
        load_model(wrong)


def test_cli_help_and_bad_flag(invoke):
    from tests.conftest import assert_user_error

    for cmd in ["demo", "evaluate", "train-source", "adapt", "compare", "export", "verify", "segment", "benchmark"]:
        res = invoke([cmd, "--help"])
        assert res.exit_code == 0 and "Example:" in res.output, cmd
    assert_user_error(invoke(["adapt", "--bogus"]), "--bogus")


def test_mapping_flags_add_to_the_config_files_key_by_key():
    # segment's --adapt-set (like --set and --arch-kw) adds to the YAML's adapt_options through build_config
    from sfda_deploy.config import SegmentConfig

    cfg = build_config(SegmentConfig, {"adapt_options": {"lr": 1e-4, "ema": 0.9}}, {"adapt_options": {"ema": 0.99}})
    assert cfg.adapt_options == {"lr": 1e-4, "ema": 0.99}
    assert build_config(SegmentConfig, {"adapt_options": {"lr": 1e-4}}, {"adapt_options": {}}).adapt_options == {
        "lr": 1e-4}
