"""Letterbox geometry (known answers computed by hand) and its round trip through the pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from sfda_deploy.data.sources import FrameInfo
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import NORMALIZATIONS, ModelMeta
from sfda_deploy.runtime.letterbox import Letterbox, fit_frames, letterbox, letterbox_params, pad_colour, unletterbox
from sfda_deploy.runtime.pipeline import stream_inference


@pytest.mark.parametrize("source, target, content, top, left", [
    # 1080p into 512x1024: scale = min(512/1080, 1024/1920) = 0.474074; 1920*0.474074 = 910.2 → 910;
    # (1024 - 910) // 2 = 57 columns left (57 right).
    ((1080, 1920), (512, 1024), (512, 910), 0, 57),
    # the tests' video into the tiny model: scale = min(32/48, 64/80) = 2/3; 80*2/3 = 53.3 → 53;
    # (64 - 53) // 2 = 5 left, 6 right (the odd column goes right).
    ((48, 80), (32, 64), (32, 53), 0, 5),
    # square into 32x64: scale = min(0.32, 0.64) = 0.32 → 32x32, (64 - 32) // 2 = 16.
    ((100, 100), (32, 64), (32, 32), 0, 16),
    # very wide: scale = min(32/10, 64/100) = 0.64; 10*0.64 = 6.4 → 6 rows; (32 - 6) // 2 = 13 on top.
    ((10, 100), (32, 64), (6, 64), 13, 0),
    # same aspect, larger: 1024x2048 into 512x1024, scale 0.5, no padding.
    ((1024, 2048), (512, 1024), (512, 1024), 0, 0),
    # already the input size.
    ((32, 64), (32, 64), (32, 64), 0, 0),
])
def test_letterbox_params_known_answers(source, target, content, top, left):
    box = letterbox_params(source, target)
    assert box == Letterbox(source, target, content, top, left)


def test_pad_colour_is_the_mean_in_rgb():
    # ImageNet mean (123.675, 116.28, 103.53), RGB → rounded (124, 116, 104).
    assert pad_colour(ModelMeta(arch="tiny")) == (124, 116, 104)
    # Caffe mean is stored in BGR order (104.007, 116.669, 122.679) → RGB (123, 117, 104).
    assert pad_colour(ModelMeta(arch="tiny", **NORMALIZATIONS["caffe"])) == (123, 117, 104)


def test_letterbox_pads_with_the_fill_and_unletterbox_crops_it_back():
    frame = np.full((4, 8, 3), 200, np.uint8)
    box = letterbox_params((4, 8), (4, 4))  # scale min(1, 0.5) = 0.5 → content 2x4, top (4-2)//2 = 1
    assert (box.content, box.top, box.left) == ((2, 4), 1, 0)
    out = letterbox(frame, box, (1, 2, 3))
    assert out.shape == (4, 4, 3)
    assert (out[[0, 3]] == (1, 2, 3)).all() and (out[1:3] == 200).all()
    labels = np.array([[9, 9, 9, 9],
                       [1, 1, 2, 2],
                       [3, 3, 4, 4],
                       [9, 9, 9, 9]], np.uint8)  # 9 = whatever the model said on the padding
    # the content rows 1..2 are resized x2 (nearest) back to 4x8: every label doubles in both axes.
    expected = np.array([[1, 1, 1, 1, 2, 2, 2, 2]] * 2 + [[3, 3, 3, 3, 4, 4, 4, 4]] * 2, np.uint8)
    assert (unletterbox(labels, box) == expected).all()


def test_identity_and_stretch_leave_frames_alone():
    frame = np.zeros((32, 64, 3), np.uint8)
    frames, boxes = fit_frames([frame], (32, 64), "letterbox", (0, 0, 0))
    assert frames[0] is frame and boxes[0].content == (32, 64)
    other = np.zeros((48, 80, 3), np.uint8)
    frames, boxes = fit_frames([other], (32, 64), "stretch", (0, 0, 0))
    assert frames[0] is other and boxes == [None]  # the backend's plain resize stretches it
    with pytest.raises(SfdaError, match="--resize"):
        fit_frames([other], (32, 64), "crop", (0, 0, 0))


class _Frames:
    live, unreadable = False, 0

    def __init__(self, frames):
        self.frames = frames

    def __iter__(self):
        for i, f in enumerate(self.frames):
            yield f, FrameInfo(i, f"f{i}")


class PadDetector:
    """Label 1 where the model input holds the pad colour exactly, 0 elsewhere (input 6x6)."""

    batch, input_size, meta = 1, (6, 6), ModelMeta(arch="tiny")

    def preprocess(self, frames):
        assert all(f.shape == (6, 6, 3) for f in frames)  # letterboxed before the backend sees them
        return np.stack(frames)

    def infer(self, x):
        return (x == pad_colour(self.meta)).all(-1).astype(np.uint8)


def test_pipeline_letterboxes_and_the_mask_has_no_padding():
    frame = np.full((6, 12, 3), 7, np.uint8)  # 1:2 into 1:1: content 3x6 at row (6-3)//2 = 1
    (pred,) = stream_inference(_Frames([frame]), PadDetector())
    assert (pred.box.content, pred.box.top) == ((3, 6), 1)
    assert int(pred.labels.sum()) == 18  # 3 padded rows of 6 seen by the model...
    assert pred.mask.shape == (6, 12) and int(pred.mask.sum()) == 0  # ...none left in the frame's mask
