"""The demo's export stage: adapted checkpoint → ONNX in the demo run dir, parity report printed."""
from __future__ import annotations

import json

import onnx
import pytest

from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.errors import SfdaError
from sfda_deploy.metadata import ModelMeta, read_onnx_meta
from sfda_deploy.models import build_model

FRAME = (32, 64)  # H W of the generated target frames (the synthetic benchmark's minimum size)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    from sfda_deploy.data.synthetic import generate

    root = generate(tmp_path_factory.mktemp("bench"), ["real"], {"val": 2}, FRAME, seed=0, progress=False)
    return root / "real"


def _ckpt(path, input_size):
    import torch

    torch.manual_seed(0)
    meta = ModelMeta(arch="tiny", input_size=input_size).with_provenance(command="adapt", method="atp")
    return save_checkpoint(path / "adapt" / "model.safetensors", build_model("tiny", num_classes=19).eval(), meta)


@pytest.mark.parametrize("input_size, expected", [
    (FRAME, FRAME),       # the checkpoint's size
    ((48, 96), (48, 96)),  # same aspect ratio as the frames: still the checkpoint's size
    ((32, 32), FRAME),    # square training crops: the frames' own size is what gets deployed
])
def test_stage_export_writes_onnx_and_prints_parity(tmp_path, target, capsys, input_size, expected):
    from sfda_deploy.commands.demo import stage_export

    run_dir = tmp_path / "demo"
    run_dir.mkdir()
    path = stage_export(_ckpt(tmp_path, input_size), run_dir, target, "cpu")
    assert path == run_dir / "export" / "model.onnx" and path.is_file()
    proto = onnx.load(str(path))
    meta = read_onnx_meta({p.key: p.value for p in proto.metadata_props}, str(path))
    assert tuple(meta.extra["imgsz"]) == expected and meta.extra["output"] == "logits"
    assert meta.extra["dynamic"] is False
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, *expected]
    report = json.loads((run_dir / "export" / "report.json").read_text())
    parity = report["parity"]["onnx_fp32"]
    assert report["passed"] and parity["argmax_agreement"] >= 99.99
    assert parity["delta_miou"] is not None  # the target val frames come with labels
    out = capsys.readouterr().out
    assert f"[export] ONNX fp32 {expected[0]}x{expected[1]}" in out
    assert f"argmax agreement {parity['argmax_agreement']:.4f}%" in out  # printed once, by run_export
    assert out.count("argmax agreement") == 1 and f"(Δ {parity['delta_miou']:+.2f})" in out


def test_stage_export_without_val_images(tmp_path):
    from sfda_deploy.commands.demo import stage_export

    (tmp_path / "demo").mkdir()
    with pytest.raises(SfdaError, match="no target val images"):
        stage_export(_ckpt(tmp_path, FRAME), tmp_path / "demo", tmp_path / "nowhere", "cpu")
    assert not (tmp_path / "demo" / "export").exists()
