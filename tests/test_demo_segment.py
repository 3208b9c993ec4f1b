"""The demo's last stage: a target-style video segmented with an exported ONNX model."""
from __future__ import annotations

import json

import pytest

from sfda_deploy.commands.demo import stage_segment, write_style_video
from sfda_deploy.data.synthetic import generate
from sfda_deploy.errors import SfdaError
from tests.runtime_data import SIZE, make_onnx, video_info


def test_stage_segment_writes_overlay_and_prints_fps(tmp_path, capsys):
    data = tmp_path / "data"
    generate(data, ("source", "fog"), {"val": 3}, (32, 64), 0)
    run_dir = tmp_path / "runs" / "demo" / "demo"
    run_dir.mkdir(parents=True)
    seg_dir = stage_segment(make_onnx(tmp_path / "model.onnx"), run_dir, data, "fog", "cpu")

    assert video_info(run_dir / "fog_val.mp4")[:3] == (3, 10.0, SIZE)  # the 3 val images at 10 fps
    assert seg_dir == run_dir / "segment"  # the demo keeps all its outputs in its own run directory
    assert not (tmp_path / "runs" / "segment").exists() and (seg_dir / "legend.png").is_file()
    summary = json.loads((seg_dir / "summary.json").read_text())
    assert (summary["frames"], summary["backend"], summary["source_kind"]) == (3, "onnxruntime", "video")
    frames, fps, size, _ = video_info(seg_dir / "overlay.mp4")
    assert (frames, fps, size) == (3, 10.0, SIZE)
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("[segment]"))
    assert str(seg_dir / "overlay.mp4") in line and f"{summary['fps_end_to_end']:.1f} fps" in line


def test_style_video_needs_generated_images(tmp_path):
    generate(tmp_path / "data", ("source",), {"val": 1}, (32, 64), 0)
    with pytest.raises(SfdaError, match="no val images of style 'fog'"):
        write_style_video(tmp_path / "data", "fog", tmp_path / "fog.mp4")
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*"))
