"""Metrics: hand-computed confusion/IoU, agreement with cityscapesscripts, the report files."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from sfda_deploy.classes import get_class_set
from sfda_deploy.data import build_dataset
from sfda_deploy.evaluate import evaluate_predictions
from sfda_deploy.metrics import (
    ConfusionMatrix,
    confidence_errors,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    prediction_share,
    reachable_gap_share,
    recall_per_class,
)
from sfda_deploy.report import write_eval_report
from tests import fixtures_data as fx


def test_confusion_and_iou_by_hand():
    pred = torch.tensor([0, 0, 1, 1, 255, 2])
    label = torch.tensor([0, 1, 1, 1, 0, 255])
    cm = confusion_matrix(pred, label, 3)
    # pixels (gt, pred): (0,0) (1,0) (1,1) (1,1) (0,none) (ignored, not counted)
    assert cm.tolist() == [[1, 0, 0, 1],
                           [1, 2, 0, 0],
                           [0, 0, 0, 0]]
    ious = iou_per_class(cm)
    # class 0: TP 1, FP 1 (gt 1 predicted 0), FN 1 (predicted none) → 1/3
    # class 1: TP 2, FP 0, FN 1 (predicted 0) → 2/3;  class 2: absent everywhere → NaN
    assert ious[0].item() == pytest.approx(1 / 3) and ious[1].item() == pytest.approx(2 / 3)
    assert math.isnan(ious[2].item())
    assert mean_iou(cm) == pytest.approx(0.5)        # (1/3 + 2/3) / 2, NaN skipped
    assert pixel_accuracy(cm) == pytest.approx(3 / 5)  # 3 correct of 5 labelled pixels
    acc = ConfusionMatrix(3)
    acc.update(pred[:3], label[:3])
    acc.update(pred[3:], label[3:])  # accumulation = one matrix over all pixels
    result = acc.result(["a", "b", "c"])
    assert result["iou"] == {"a": 33.33, "b": 66.67, "c": None} and result["miou"] == 50.0
    assert result["confusion"] == [[1, 0, 0], [1, 2, 0], [0, 0, 0]] and result["unassigned"] == [1, 0, 0]


def _random_cityscapes(tmp_path, rng, n=3):
    """A Cityscapes layout with blocky random labelIds (every id 0..33, ignored ones too, but never
    31 'train', so one class is absent) and predictions: the truth where a coin says so, else any id."""
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    ids = np.array([lab.id for lab in labels.labels if lab.id >= 0 and lab.id != 31])
    root = fx.write_cityscapes(tmp_path / "cs", n=n)
    preds = tmp_path / "preds"
    preds.mkdir()
    gt_files, pred_files = [], []
    for gt_path in sorted((root / "gtFine").rglob("*_labelIds.png")):
        blocks = rng.choice(ids, size=(4, 6)).astype(np.uint8)
        gt = cv2.resize(blocks, fx.SIZE[::-1], interpolation=cv2.INTER_NEAREST)
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.choice(ids, size=gt.shape)).astype(np.uint8)
        fx.write_raw(gt_path, gt)
        stem = gt_path.name.replace("_gtFine_labelIds.png", "_leftImg8bit")
        pred_files.append(str(fx.write_raw(preds / f"{stem}.png", pred)))
        gt_files.append(str(gt_path))
    return root, preds, gt_files, pred_files


def test_matches_cityscapesscripts_pixel_level(tmp_path):
    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    root, preds, gt_files, pred_files = _random_cityscapes(tmp_path, np.random.default_rng(0))
    ev.args.quiet, ev.args.JSONOutput, ev.args.evalInstLevelScore = True, False, False
    theirs = ev.evaluateImgLists(pred_files, gt_files, ev.args)

    classes = get_class_set("cityscapes19")
    cm = evaluate_predictions(build_dataset("cityscapes", root, "val"), preds, classes, "labelid", progress=False)
    ours = iou_per_class(cm.mat).tolist()
    for name, value in zip(classes.names, ours):
        expected = theirs["classScores"][name]
        if math.isnan(expected):
            assert math.isnan(value), name
        else:
            assert abs(value - expected) < 1e-6, (name, value, expected)
    assert math.isnan(theirs["classScores"]["train"])  # the absent class is skipped by both means
    assert abs(mean_iou(cm.mat) - theirs["averageScoreClasses"]) < 1e-6
    assert abs(cm.result(classes.names)["miou"] - 100 * theirs["averageScoreClasses"]) <= 0.005  # rounded


def test_trainid_predictions_score_the_same(tmp_path):
    root, preds, _, pred_files = _random_cityscapes(tmp_path, np.random.default_rng(1), n=2)
    classes = get_class_set("cityscapes19")
    as_train = tmp_path / "preds_train"
    lut = classes.labelid_lut()  # labelId → trainId (cityscapes19 indices are trainIds), else 255
    for f in pred_files:
        fx.write_raw(as_train / f.rsplit("/", 1)[1], lut[cv2.imread(f, cv2.IMREAD_UNCHANGED)])
    ds = build_dataset("cityscapes", root, "val")
    a = evaluate_predictions(ds, preds, classes, "labelid", progress=False)
    b = evaluate_predictions(ds, as_train, classes, "trainid", progress=False)
    assert torch.equal(a.mat, b.mat) and a.mat[:, 19].sum() > 0  # some predictions were of no class


def test_eval_report_files(tmp_path):
    classes = get_class_set("synthia16")
    cm = ConfusionMatrix(16)
    label = torch.arange(16).repeat(8)
    cm.update(torch.where(label % 3 == 0, torch.full_like(label, 255), label), label)
    result = cm.result(classes.names)
    table = write_eval_report(tmp_path, result, classes.names, "val", {"target": "synthia"})
    assert table.splitlines()[0].split() == ["class", "val"] and len(table.splitlines()) == 18  # header, 16, mIoU
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["target"] == "synthia" and list(saved["iou"]) == list(classes.names)
    assert saved["iou"]["road"] == 0.0 and saved["iou"]["sidewalk"] == 100.0  # road (0) all "none"
    assert (tmp_path / "table.txt").read_text().strip() == table
    for png in ("iou.png", "confusion.png"):
        image = cv2.imread(str(tmp_path / png))
        assert image is not None and image.shape[0] > 100, png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "iou.png", "metrics.json", "table.txt"]


# --------------------------------------------------------------- what self-training can reach (by hand)
# rows = ground truth, columns = prediction, last column = "no class":
#   class 0: 4 right, 1 as class 1, 1 as no class  -> recall 4/6
#   class 1: 2 right, 2 as class 2                 -> recall 2/4
#   class 2: no pixels                             -> recall NaN
_CM = torch.tensor([[4, 1, 0, 1], [0, 2, 2, 0], [0, 0, 0, 0]])


def test_recall_per_class_by_hand():
    r = recall_per_class(_CM)
    assert r[0].item() == pytest.approx(4 / 6) and r[1].item() == pytest.approx(0.5)
    assert math.isnan(r[2].item())


def test_prediction_share_by_hand():
    # predicted columns 0..2 hold 4, 3 and 2 of the 10 labelled pixels (the no-class pixel counts in the total)
    assert prediction_share(_CM).tolist() == pytest.approx([0.4, 0.3, 0.2])


def test_reachable_gap_share_by_hand():
    # the 4th class is absent (NaN) and left out; source mean 10, oracle mean 100/3 (gap 70/3);
    # reachable classes take max(source, oracle): 50, (class 1 unreachable: 0), max(20, 10) = 20 -> mean 70/3
    share = reachable_gap_share([10, 0, 20, float("nan")], [50, 40, 10, 30], [True, False, True, True])
    assert share == pytest.approx((70 / 3 - 10) / (100 / 3 - 10))  # = 4/7
    assert reachable_gap_share([10, 0], [50, 40], [True, True]) == pytest.approx(1.0)
    assert math.isnan(reachable_gap_share([10.0], [5.0], [True]))  # no gap to close


def test_confidence_errors_by_hand():
    out = confidence_errors([True, True, False, False, False], [True, False, False, True, False])
    assert out == pytest.approx({"confident": 0.4, "confident_wrong": 0.5, "unsure_wrong": 2 / 3})
    assert math.isnan(confidence_errors([False], [True])["confident_wrong"])
