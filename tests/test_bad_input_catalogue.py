"""A catalogue of bad inputs across every command (issue 17): missing, empty, corrupt, wrong-type,
wrong-range, wrong-shape and unwritable. Each case must end with exit code 2, one ``error:`` line, no
traceback, and nothing written: no run directory, no file anywhere under the test's folders.

Cases run in-process (CliRunner) on tiny files made once per session (``assets``); ``{name}`` in an
argument is replaced by that asset's path.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.metadata import ModelMeta
from sfda_deploy.models import build_model
from tests import fixtures_data as fx
from tests.conftest import assert_user_error


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> SimpleNamespace:
    """Tiny inputs, good and bad, shared by every case (read-only for the cases)."""
    import cv2
    import onnx
    from onnx import TensorProto, helper

    from sfda_deploy.metadata import attach_to_onnx

    root = tmp_path_factory.mktemp("catalogue")
    a = SimpleNamespace(root=root)
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=19)
    meta = ModelMeta(arch="tiny", input_size=fx.SIZE)
    a.ckpt = save_checkpoint(root / "model.safetensors", model, meta)
    model.classifier.weight.data[0, 0] = float("nan")
    a.nan_ckpt = save_checkpoint(root / "nan" / "model.safetensors", model, meta)
    a.corrupt_ckpt = root / "corrupt.safetensors"
    a.corrupt_ckpt.write_bytes(b"\x00\x01 not safetensors")
    a.empty_ckpt = root / "empty.safetensors"
    a.empty_ckpt.write_bytes(b"")
    a.corrupt_pth = root / "corrupt.pth"
    a.corrupt_pth.write_bytes(b"not a pickle")
    a.data = fx.write_cityscapes(root / "cs", split="val", n=2)
    fx.write_cityscapes(a.data, split="train", n=2)
    a.empty_dir = root / "empty_dir"
    a.empty_dir.mkdir()
    a.corrupt_png = fx.corrupt(root / "bad_images" / "x.png") if (root / "bad_images").mkdir() is None else None
    a.text_mp4 = root / "notes.mp4"
    a.text_mp4.write_text("this is not a video\n")
    a.missing = root / "does_not_exist"
    a.file = root / "a_file"
    a.file.write_text("x")
    # an ONNX with sfda-deploy metadata whose input is not [B,3,H,W]
    node = helper.make_node("Identity", ["images"], ["logits"])
    graph = helper.make_graph([node], "flat", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 16])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    attach_to_onnx(proto, meta)
    a.flat_onnx = root / "flat.onnx"
    onnx.save(proto, str(a.flat_onnx))
    # run directories a command must not take files from
    for status, marker, text in (("failed", "FAILED", "error: loss became non-finite\n"),
                                 ("killed", "INCOMPLETE", "pid 999999999 host {host} started 2020-01-01\n")):
        d = root / "runs_of_others" / status
        d.mkdir(parents=True)
        save_checkpoint(d / "model.safetensors", build_model("tiny", num_classes=19), meta)
        import socket

        (d / marker).write_text(text.format(host=socket.gethostname()))
        setattr(a, f"{status}_ckpt", d / "model.safetensors")
    # a run to resume, with the settings it was started with
    a.run = root / "runs_of_others" / "adapt_run"
    a.run.mkdir()
    (a.run / "config.yaml").write_text(f"target: cityscapes\ndata_root: {a.data}\nsource: {a.ckpt}\nmethod: atp\n"
                                       "iters: 3\nbatch: 2\nresume: null\noptions: {}\n")
    # YAML config files
    for name, text in {"bad_syntax": "batch: [1,\n", "a_list": "- 1\n- 2\n", "unknown_key": "bacth: 2\n",
                       "batch_text": "batch: two\n", "imgsz_scalar": "imgsz: 5\n", "output_blob": "output: blob\n",
                       "backend_blob": "backend: onnxrt\n", "options_scalar": "options: 3\n",
                       "max_images_zero": "max_images: 0\n", "lr_text": "lr: fast\n"}.items():
        (root / f"{name}.yaml").write_text(text)
        setattr(a, f"yaml_{name}", root / f"{name}.yaml")
    # a video whose data stops before the frames its header announces (kept aside: a CLI case below)
    frames = [np.full((16, 24, 3), i * 5, np.uint8) for i in range(12)]
    w = cv2.VideoWriter(str(root / "full.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (24, 16))
    for f in frames:
        w.write(f)
    w.release()
    return a


ADAPT = ["adapt", "--target", "cityscapes", "--data-root", "{data}", "--source", "{ckpt}", "--workers", "0"]
EVAL = ["evaluate", "--checkpoint", "{ckpt}", "--data-root", "{data}"]
TRAIN = ["train-source", "--data-root", "{data}", "--arch", "tiny", "--workers", "0"]
EXPORT = ["export", "{ckpt}"]
SEGMENT = ["segment", "{data}/leftImg8bit/val/aachen", "--model", "{ckpt}"]
BENCH = ["benchmark", "{ckpt}"]
COMPARE = ["compare", "--data-root", "{data}", "--source", "{ckpt}"]

# (id, arguments, fragments the one line must contain)
CASES = [
    # ---------------------------------------------------------------- missing
    ("evaluate-missing-checkpoint", ["evaluate", "--checkpoint", "{missing}", "--data-root", "{data}"], ["does not exist"]),
    ("evaluate-missing-data-root", ["evaluate", "--checkpoint", "{ckpt}"], ["--data-root"]),
    ("evaluate-missing-config", [*EVAL, "--config", "{missing}"], ["config file", "does not exist"]),
    ("adapt-missing-source", ["adapt", "--data-root", "{data}", "--source", "{missing}"], ["does not exist"]),
    ("adapt-no-source", ["adapt", "--data-root", "{data}"], ["--source"]),
    ("adapt-missing-resume", ["adapt", "--resume", "{missing}"], ["not a resumable adapt run"]),
    ("compare-missing-resume", ["compare", "--resume", "{missing}"], ["not a resumable compare run"]),
    ("import-missing-pth", ["import-pth", "{missing}", "--arch", "tiny", "--normalization", "imagenet"], ["does not exist"]),
    ("export-missing-checkpoint", ["export", "{missing}"], ["does not exist"]),
    ("verify-missing-model", ["verify", "{missing}", "{ckpt}"], ["does not exist"]),
    ("segment-missing-source", ["segment", "{missing}", "--model", "{ckpt}"], ["{missing}"]),
    ("segment-missing-model", [*SEGMENT[:2], "--model", "{missing}"], ["does not exist"]),
    ("benchmark-missing-model", ["benchmark", "{missing}"], ["does not exist"]),
    ("train-source-no-data-root", ["train-source", "--arch", "tiny"], ["--data-root"]),
    # ---------------------------------------------------------------- empty
    ("evaluate-empty-checkpoint", ["evaluate", "--checkpoint", "{empty_ckpt}", "--data-root", "{data}"], ["empty.safetensors"]),
    ("evaluate-empty-data-root", ["evaluate", "--checkpoint", "{ckpt}", "--data-root", "{empty_dir}"], ["leftImg8bit"]),
    ("adapt-empty-data-root", ["adapt", "--data-root", "{empty_dir}", "--source", "{ckpt}"], ["leftImg8bit"]),
    ("adapt-resume-empty-dir", ["adapt", "--resume", "{empty_dir}"], ["no config.yaml"]),
    ("segment-empty-folder", ["segment", "{empty_dir}", "--model", "{ckpt}"], ["{empty_dir}"]),
    ("export-empty-checkpoint", ["export", "{empty_ckpt}"], ["empty.safetensors"]),
    ("train-source-empty-data-root", ["train-source", "--data-root", "{empty_dir}", "--arch", "tiny"], ["leftImg8bit"]),
    ("compare-empty-methods", [*COMPARE, "--methods", ""], ["--methods"]),
    # ---------------------------------------------------------------- corrupt
    ("evaluate-corrupt-checkpoint", ["evaluate", "--checkpoint", "{corrupt_ckpt}", "--data-root", "{data}"], ["not a readable"]),
    ("evaluate-nan-weights", ["evaluate", "--checkpoint", "{nan_ckpt}", "--data-root", "{data}"],
     ["non-finite", "classifier.weight"]),
    ("evaluate-failed-run", ["evaluate", "--checkpoint", "{failed_ckpt}", "--data-root", "{data}"], ["run that failed"]),
    ("evaluate-killed-run", ["evaluate", "--checkpoint", "{killed_ckpt}", "--data-root", "{data}"], ["interrupted"]),
    ("evaluate-yaml-syntax", [*EVAL, "--config", "{yaml_bad_syntax}"], ["not valid YAML"]),
    ("evaluate-yaml-list", [*EVAL, "--config", "{yaml_a_list}"], ["mapping"]),
    ("evaluate-yaml-unknown-key", [*EVAL, "--config", "{yaml_unknown_key}"], ["unknown option 'bacth'", "batch"]),
    ("adapt-corrupt-source", ["adapt", "--data-root", "{data}", "--source", "{corrupt_ckpt}"], ["not a readable"]),
    ("adapt-nan-source", ["adapt", "--data-root", "{data}", "--source", "{nan_ckpt}"], ["non-finite"]),
    ("import-corrupt-pth", ["import-pth", "{corrupt_pth}", "--arch", "tiny", "--normalization", "imagenet"], ["corrupt.pth"]),
    ("export-corrupt-checkpoint", ["export", "{corrupt_ckpt}"], ["not a readable"]),
    ("export-nan-weights", ["export", "{nan_ckpt}"], ["non-finite"]),
    ("export-failed-run", ["export", "{failed_ckpt}"], ["run that failed"]),
    ("segment-corrupt-png", ["segment", "{root}/bad_images", "--model", "{ckpt}"], ["can be decoded", "x.png"]),
    ("segment-text-as-mp4", ["segment", "{text_mp4}", "--model", "{ckpt}"], ["notes.mp4"]),
    ("segment-nan-model", [*SEGMENT[:2], "--model", "{nan_ckpt}"], ["non-finite"]),
    ("segment-killed-run", [*SEGMENT[:2], "--model", "{killed_ckpt}"], ["interrupted"]),
    ("benchmark-corrupt-model", ["benchmark", "{corrupt_ckpt}"], ["not a readable"]),
    ("verify-corrupt-model", ["verify", "{corrupt_ckpt}", "{ckpt}"], ["not a readable"]),
    # ---------------------------------------------------------------- wrong type
    ("evaluate-batch-text", [*EVAL, "--batch", "two"], ["--batch"]),
    ("evaluate-yaml-batch-text", [*EVAL, "--config", "{yaml_batch_text}"], ["--batch 'two'", "an integer"]),
    ("evaluate-yaml-max-images-zero", [*EVAL, "--config", "{yaml_max_images_zero}"], ["--max-images 0"]),
    ("adapt-set-text-for-float", [*ADAPT, "--set", "tau_n=abc"], ["--set tau_n 'abc'", "a number"]),
    ("adapt-set-text-for-bool", [*ADAPT, "--set", "ema_ramp=maybe"], ["--set ema_ramp", "true or false"]),
    ("adapt-set-unknown-key", [*ADAPT, "--set", "tua_n=0.1"], ["unknown option 'tua_n'", "tau_n"]),
    ("adapt-set-no-equals", [*ADAPT, "--set", "tau_n"], ["KEY=VALUE"]),
    ("adapt-yaml-options-scalar", [*ADAPT, "--config", "{yaml_options_scalar}"], ["options"]),
    ("adapt-yaml-lr-text", [*ADAPT, "--config", "{yaml_lr_text}"], ["--lr 'fast'", "a number"]),
    ("train-source-iters-text", [*TRAIN, "--iters", "many"], ["--iters"]),
    ("segment-alpha-text", [*SEGMENT, "--alpha", "half"], ["--alpha"]),
    ("export-yaml-output", [*EXPORT, "--config", "{yaml_output_blob}"], ["--output 'blob'", "logits, mask"]),
    ("segment-yaml-backend", [*SEGMENT, "--config", "{yaml_backend_blob}"], ["did you mean 'onnxruntime'"]),
    ("adapt-unknown-method", [*ADAPT, "--method", "atq"], ["unknown method 'atq'", "did you mean 'atp'"]),
    ("segment-unknown-backend", [*SEGMENT, "--backend", "onnxrt"], ["--backend 'onnxrt'", "did you mean 'onnxruntime'"]),
    ("benchmark-unknown-backend", [*BENCH, "--backend", "tensorrtt"], ["did you mean 'tensorrt'"]),
    ("adapt-set-unknown-optimizer", [*ADAPT, "--set", "optimizer=adamm"], ["did you mean 'adamw'"]),
    ("compare-unknown-method", [*COMPARE, "--methods", "atp,ldbf"], ["ldbf"]),
    ("train-source-unknown-arch", [*TRAIN[:3], "--arch", "mobilenetv3"], ["unknown model 'mobilenetv3'"]),
    ("evaluate-unknown-class-set", [*EVAL, "--class-set", "cityscapes20"], ["cityscapes20"]),
    # ---------------------------------------------------------------- wrong range
    ("evaluate-batch-zero", [*EVAL, "--batch", "0"], ["--batch 0", ">= 1"]),
    ("evaluate-max-images-zero", [*EVAL, "--max-images", "0"], ["--max-images 0"]),
    ("evaluate-workers-negative", [*EVAL, "--workers", "-1"], ["--workers -1", ">= 0"]),
    ("adapt-iters-zero", [*ADAPT, "--iters", "0"], ["--iters 0"]),
    ("adapt-batch-zero", [*ADAPT, "--batch", "0"], ["--batch 0"]),
    ("adapt-lr-negative", [*ADAPT, "--lr", "-0.1"], ["--lr -0.1", "> 0"]),
    ("adapt-lr-nan", [*ADAPT, "--lr", "nan"], ["--lr"]),
    ("adapt-seed-negative", [*ADAPT, "--seed", "-1"], ["--seed -1"]),
    ("adapt-eval-every-negative", [*ADAPT, "--eval-every", "-5"], ["--eval-every -5"]),
    ("adapt-set-flip-above-one", [*ADAPT, "--set", "flip=2"], ["--set flip", "from 0 to 1"]),
    ("adapt-rounds-above-budget", [*ADAPT, "--method", "hiast", "--iters", "2"], ["rounds"]),
    ("adapt-resume-differing-flag", ["adapt", "--resume", "{run}", "--iters", "5"], ["--iters 5 differs from 3"]),
    ("train-source-lr-zero", [*TRAIN, "--lr", "0"], ["--lr 0"]),
    ("train-source-batch-negative", [*TRAIN, "--batch", "-2"], ["--batch -2"]),
    ("import-num-classes-zero", ["import-pth", "{corrupt_pth}", "--arch", "tiny", "--normalization", "imagenet",
                                 "--num-classes", "0"], ["--num-classes 0"]),
    ("export-opset-low", [*EXPORT, "--opset", "3"], ["--opset 3"]),
    ("export-batch-zero", [*EXPORT, "--batch", "0"], ["--batch 0"]),
    ("export-workspace-zero", [*EXPORT, "--workspace", "0"], ["--workspace 0"]),
    ("export-calib-count-zero", [*EXPORT, "--calib-count", "0"], ["--calib-count 0"]),
    ("verify-max-images-zero", ["verify", "{ckpt}", "{ckpt}", "--max-images", "0"], ["--max-images 0"]),
    ("segment-vid-stride-zero", [*SEGMENT, "--vid-stride", "0"], ["--vid-stride 0"]),
    ("segment-alpha-above-one", [*SEGMENT, "--alpha", "2"], ["--alpha 2"]),
    ("segment-max-frames-zero", [*SEGMENT, "--max-frames", "0"], ["--max-frames 0"]),
    ("segment-threads-zero", [*SEGMENT, "--threads", "0"], ["--threads 0"]),
    ("benchmark-iters-zero", [*BENCH, "--iters", "0"], ["--iters 0"]),
    ("benchmark-warmup-negative", [*BENCH, "--warmup", "-1"], ["--warmup -1"]),
    ("demo-images-zero", ["demo", "--images", "0"], ["--images 0"]),
    ("demo-budget-negative", ["demo", "--budget", "-1"], ["--budget -1", ">= 0"]),
    ("generate-data-train-negative", ["generate-data", "--train", "-1"], ["--train -1"]),
    ("generate-data-seed-negative", ["generate-data", "--seed", "-5"], ["--seed -5"]),
    ("compare-oracle-above-100", [*COMPARE, "--oracle-miou", "150"], ["--oracle-miou 150"]),
    ("compare-iters-zero", [*COMPARE, "--iters", "0"], ["--iters 0"]),
    # ---------------------------------------------------------------- wrong shape
    ("evaluate-imgsz-zero", [*EVAL, "--imgsz", "0", "0"], ["--imgsz"]),
    ("evaluate-yaml-imgsz-scalar", [*EVAL, "--config", "{yaml_imgsz_scalar}"], ["--imgsz 5", "2 values"]),
    ("adapt-crop-zero", [*ADAPT, "--crop", "0", "32"], ["--crop [0, 32]"]),
    ("adapt-set-crop-three", [*ADAPT, "--set", "crop=[1,2,3]"], ["--set crop [1, 2, 3]", "2 values"]),
    ("adapt-set-crop-scalar", [*ADAPT, "--set", "crop=64"], ["--set crop 64"]),
    ("train-source-crop-one-value", [*TRAIN, "--crop", "32"], ["--crop"]),
    ("import-input-size-zero", ["import-pth", "{corrupt_pth}", "--arch", "tiny", "--normalization", "imagenet",
                                "--input-size", "0", "10"], ["--input-size"]),
    ("export-imgsz-negative", [*EXPORT, "--imgsz", "-1", "5"], ["--imgsz"]),
    ("demo-size-zero", ["demo", "--size", "0", "0"], ["--size"]),
    ("generate-data-size-zero", ["generate-data", "--size", "0", "5"], ["--size"]),
    ("segment-onnx-input-not-bchw", [*SEGMENT[:2], "--model", "{flat_onnx}"], ["1x4x16", "[B,3,H,W]"]),
    ("benchmark-onnx-input-not-bchw", ["benchmark", "{flat_onnx}"], ["1x4x16", "[B,3,H,W]"]),
    ("export-onnx-as-checkpoint", ["export", "{flat_onnx}"], ["not a checkpoint"]),
]
UNWRITABLE = [
    ("evaluate-unwritable", EVAL),
    ("segment-unwritable", SEGMENT),
    ("benchmark-unwritable", [*BENCH, "--iters", "1", "--warmup", "0"]),
    ("generate-data-unwritable", ["generate-data", "--train", "1", "--val", "1", "--size", "32", "64",
                                  "--styles", "source"]),
]


def _fill(args: list, a: SimpleNamespace) -> list[str]:
    paths = {k: str(v) for k, v in vars(a).items() if isinstance(v, Path)}
    return [str(x).format(**paths) for x in args]


def _files(*roots: Path) -> set[Path]:
    return {p for r in roots if r.exists() for p in r.rglob("*")}


def test_the_catalogue_is_big_enough():
    kinds = ("missing", "empty", "corrupt", "text", "unknown", "zero", "negative", "above", "scalar", "unwritable")
    assert len(CASES) + len(UNWRITABLE) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)  # ids are unique
    assert all(any(k in c[0] for c in CASES + UNWRITABLE) for k in kinds)


@pytest.mark.parametrize("args, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(assets, invoke, tmp_path, args, fragments):
    before = _files(tmp_path, assets.root)
    result = invoke(_fill(args, assets))
    assert_user_error(result, *_fill(fragments, assets))
    assert _files(tmp_path, assets.root) == before  # nothing written, no run directory


@pytest.mark.parametrize("args", [c[1] for c in UNWRITABLE], ids=[c[0] for c in UNWRITABLE])
def test_unwritable_output(assets, invoke, tmp_path, monkeypatch, args):
    monkeypatch.setenv("SFDA_RUNS_DIR", str(assets.file / "runs"))  # below a plain file: nothing can be created
    before = _files(tmp_path, assets.root)
    assert_user_error(invoke(_fill(args, assets)), "cannot create the output directory", "SFDA_RUNS_DIR")
    assert _files(tmp_path, assets.root) == before
