"""``sfda-deploy evaluate`` through the CLI: checkpoint and predictions modes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.metrics import ConfusionMatrix
from sfda_deploy.models import build_model
from tests import fixtures_data as fx
from tests.conftest import assert_user_error

OUTPUTS = ["config.yaml", "confusion.png", "iou.png", "log.txt", "metrics.json", "table.txt"]


def _run_dir() -> Path:
    runs = sorted((Path(os.environ["SFDA_RUNS_DIR"]) / "evaluate").iterdir())
    assert len(runs) == 1
    return runs[0]


def tiny_checkpoint(path: Path, class_set="cityscapes19", num_classes=19, seed=0) -> Path:
    torch.manual_seed(seed)
    model = build_model("tiny", num_classes=num_classes).eval()
    return save_checkpoint(path, model, ModelMeta(arch="tiny", class_set=class_set, num_classes=num_classes,
                                                  input_size=fx.SIZE))


def test_predictions_mode(tmp_path, invoke):
    root = fx.write_cityscapes(tmp_path / "cs", n=2)
    preds = tmp_path / "preds"
    for i in range(2):  # perfect except image 1, where the 'car' band (26) is predicted 'road' (7)
        raw = fx.bands(fx.CITYSCAPES_IDS if i == 0 else (7, 7, 0, 33, 24, 21))
        fx.write_raw(preds / "aachen" / f"aachen_{i:06d}_000019_leftImg8bit.png", raw)
    res = invoke(["evaluate", "--predictions", preds, "--target", "cityscapes", "--data-root", root, "--split", "val"])
    assert res.exit_code == 0, res.output
    run = _run_dir()
    assert sorted(p.name for p in run.iterdir()) == OUTPUTS
    m = json.loads((run / "metrics.json").read_text())
    # 16 rows x 4 px per band and image. road: TP 128, FP 64 (car of image 1) → 66.67;
    # car: TP 64, FN 64 → 50; bicycle, person, vegetation: 100; 'unlabeled' (0) is ignored.
    assert m["iou"]["road"] == 66.67 and m["iou"]["car"] == 50.0 and m["iou"]["bicycle"] == 100.0
    assert m["miou"] == 83.33  # (66.667 + 50 + 3 * 100) / 5
    assert m["images"] == 2 and m["pred_format"] == "labelid" and m["class_set"] == "cityscapes19"
    assert m["iou"]["sky"] is None  # absent from both: '-' in the table, not in the mean
    assert "road" in res.output and "mIoU" in res.output and str(run) in res.output


def test_predictions_trainid_format_and_class_set(tmp_path, invoke):
    root = fx.write_synthia(tmp_path / "syn", n=2)
    preds = tmp_path / "preds"
    for i in range(2):  # trainIds of the SYNTHIA bands: road 0, car 13, -, bicycle 18, terrain 9, -
        fx.write_raw(preds / f"{i:07d}.png", fx.bands((0, 13, 255, 18, 9, 255)))
    res = invoke(["evaluate", "--predictions", preds, "--pred-format", "trainid", "--target", "synthia",
                  "--data-root", root, "--split", "train", "--class-set", "synthia16"])
    assert res.exit_code == 0, res.output
    m = json.loads((_run_dir() / "metrics.json").read_text())
    assert list(m["iou"])[:2] == ["road", "sidewalk"] and len(m["iou"]) == 16 and "terrain" not in m["iou"]
    assert m["miou"] == 100.0  # road, car, bicycle exact; terrain is not a synthia16 class


def test_checkpoint_mode_matches_direct_evaluation(tmp_path, invoke):
    root = fx.write_cityscapes(tmp_path / "cs", n=3)
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors")
    res = invoke(["evaluate", "--checkpoint", ckpt, "--target", "cityscapes", "--data-root", root,
                  "--batch", 2, "--max-images", 2])
    assert res.exit_code == 0, res.output
    run = _run_dir()
    assert sorted(p.name for p in run.iterdir()) == OUTPUTS
    m = json.loads((run / "metrics.json").read_text())
    assert m["images"] == 2 and m["checkpoint"] == str(ckpt)

    # The same numbers by hand: normalise (ImageNet mean/std, RGB), argmax, one confusion matrix.
    from sfda_deploy.checkpoint import load_model
    from sfda_deploy.data import build_dataset

    model, meta = load_model(ckpt)
    cm = ConfusionMatrix(19)
    ds = build_dataset("cityscapes", root, "val")
    for i in range(2):
        x = (ds[i]["image"].float()[None] - torch.tensor(meta.mean).view(1, 3, 1, 1)) / torch.tensor(meta.std).view(1, 3, 1, 1)
        with torch.no_grad():
            cm.update(model(x).argmax(1), ds[i]["label"][None])
    expected = cm.result(meta.classes.names)
    assert m["iou"] == expected["iou"] and m["confusion"] == expected["confusion"]
    assert np.sum(m["confusion"]) == 2 * 16 * 20  # 2 images, 16x24 px, one band of 6 ignored


def test_runs_never_overwritten(tmp_path, invoke):
    root = fx.write_gta5(tmp_path / "gta", n=1)
    ckpt = tiny_checkpoint(tmp_path / "m.safetensors")
    args = ["evaluate", "--checkpoint", ckpt, "--target", "gta5", "--data-root", root, "--split", "train"]
    assert invoke(args).exit_code == 0
    assert invoke(args + ["--name", "eval"]).exit_code == 0
    names = sorted(p.name for p in (Path(os.environ["SFDA_RUNS_DIR"]) / "evaluate").iterdir())
    assert names == ["eval", "eval-2"]


def test_evaluate_model_resizes_logits_to_label_size():
    from sfda_deploy.evaluate import evaluate_model

    class HalfSize(torch.nn.Module):
        """Logits at half the input size, 'car' (13) everywhere."""

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 19, x.shape[2] // 2, x.shape[3] // 2)
            logits[:, 13] = 1.0
            return logits

    # class indices of the fixture bands (4 px wide): road, car, ignore, bicycle, person, vegetation
    label = torch.from_numpy(fx.bands((0, 13, 255, 18, 11, 8)).astype(np.int64))[None]
    batch = {"image": torch.zeros(1, 3, 16, 24, dtype=torch.uint8), "label": label}
    result = evaluate_model(HalfSize(), ModelMeta(arch="tiny"), [batch], progress=False)
    confusion = np.array(result["confusion"])
    assert confusion[:, 13].sum() == confusion.sum() == 16 * 20  # every labelled pixel scored, as car
    assert result["iou"]["car"] == 20.0  # TP 64 / (64 + 256 FP)


def test_evaluate_model_at_a_fixed_input_size_and_the_flag_checks(tmp_path, invoke):
    # --imgsz: the model sees the resized image (the lineage's 512x1024 protocol), the score stays at
    # the label's size: 'car' on the left half of the model's 8x12 input covers the label's left 12 columns
    from sfda_deploy.evaluate import evaluate_model

    seen = []

    class LeftCar(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            logits = torch.zeros(x.shape[0], 19, *x.shape[-2:])
            logits[:, 13, :, : x.shape[3] // 2] = 1.0  # car on the left half, road elsewhere
            logits[:, 0, :, x.shape[3] // 2:] = 1.0
            return logits

    label = torch.zeros(1, 16, 24, dtype=torch.int64)
    label[:, :, :12] = 13
    batch = {"image": torch.zeros(1, 3, 16, 24, dtype=torch.uint8), "label": label}
    result = evaluate_model(LeftCar(), ModelMeta(arch="tiny", align_corners=True), [batch], progress=False,
                            imgsz=(8, 12))
    assert seen == [(8, 12)] and result["iou"]["car"] == 100.0 and result["iou"]["road"] == 100.0
    assert_user_error(invoke(["evaluate", "--predictions", tmp_path, "--imgsz", 8, 12, "--data-root", tmp_path]),
                      "--imgsz 8 12 needs --checkpoint")
