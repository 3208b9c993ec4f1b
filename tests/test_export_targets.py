"""export --deepstream / --triton: the nvinfer config read by a strict reader of nvinfer's documented keys,
nvinfer's own preprocessing reproducing the torch path, Triton's config.pbtxt read by tritonclient's
model-config protobuf and checked against the ONNX with ONNX Runtime, and the bad inputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sfda_deploy.checkpoint import save_checkpoint
from sfda_deploy.config import ExportConfig
from sfda_deploy.metadata import NORMALIZATIONS, ModelMeta
from sfda_deploy.models import build_model
from tests.conftest import assert_user_error
from tests.nvinfer_config import ConfigError, check_segmentation, parse_nvinfer_config

SIZE = (32, 48)  # H W: multiples of the tiny model's stride 8


def _checkpoint(path: Path, normalization: str = "imagenet") -> Path:
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=19).eval()
    meta = ModelMeta(arch="tiny", input_size=SIZE, **NORMALIZATIONS[normalization])
    return save_checkpoint(path, model, meta)


def _export(root: Path, name: str, **settings) -> Path:
    """Export into ``root/name``; the lines the export said go to ``root/name.said``."""
    from sfda_deploy.commands.export import run_export
    from sfda_deploy.messages import set_reporter

    run_dir = root / name
    run_dir.mkdir(parents=True)
    ckpt = _checkpoint(root / f"{name}.safetensors", settings.pop("normalization", "imagenet"))
    said = []
    previous = set_reporter(lambda line, err: said.append(line))
    try:
        run_export(ExportConfig(checkpoint=str(ckpt), **settings), run_dir=run_dir)
    finally:
        set_reporter(previous)
    (root / f"{name}.said").write_text("\n".join(said))
    return run_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One static export with both targets (imagenet, RGB) and one dynamic ``--output mask`` Triton export of
    a BGR (caffe) model, with the DeepStream folder too."""
    root = tmp_path_factory.mktemp("targets")
    static = _export(root, "static", targets=("deepstream", "triton"))
    dynamic = _export(root, "dynamic", targets=("deepstream", "triton"), dynamic=True, output="mask",
                      mask_dtype="uint8", normalization="caffe",
                      target_options={"triton.model_name": "seg", "triton.instance_kind": "gpu",
                                      "triton.ort_tensorrt": True})
    return {"static": static, "dynamic": dynamic, "root": root}


# ------------------------------------------------------------------------------------------ DeepStream
def _properties(run: Path) -> dict:
    text = (run / "deepstream" / "config_infer_primary_segmentation.txt").read_text()
    return parse_nvinfer_config(text)["property"]


@pytest.mark.parametrize("run", ["static", "dynamic"])
def test_deepstream_config_keys_are_all_documented(exported, run):
    props = _properties(exported[run])
    check_segmentation(props)
    assert props["network-type"] == 2 and props["network-mode"] == 0
    assert props["num-detected-classes"] == 19 and props["infer-dims"] == [3, *SIZE]
    assert props["net-scale-factor"] == 1.0 and props["offsets"] == [0.0, 0.0, 0.0]
    assert props["model-color-format"] == 0  # RGB: the graph reorders to BGR itself for a caffe model
    folder = exported[run] / "deepstream"
    assert (folder / props["onnx-file"]).is_file() and (folder / props["labelfile-path"]).is_file()
    assert props["model-engine-file"] == "model.onnx_b1_gpu0_fp32.engine"  # the name nvinfer saves its build as
    labels = (folder / props["labelfile-path"]).read_text().splitlines()
    assert len(labels) == 19 and labels[0] == "road"
    for sample in ("deepstream_segment.py", "README.md"):
        assert (folder / sample).is_file()
    compile((folder / "deepstream_segment.py").read_text(), "deepstream_segment.py", "exec")


def test_the_strict_reader_refuses_what_nvinfer_does_not_document():
    good = "[property]\nnetwork-type=2\n"
    assert parse_nvinfer_config(good)["property"]["network-type"] == 2
    for bad, why in ((good + "net-scale=1.0\n", "unknown nvinfer key"), (good + "network-type=2\n", "twice"),
                     (good + "infer-dims=3;a;4\n", "not of type"), ("[propery]\nbatch-size=1\n", "unknown group"),
                     ("batch-size=1\n", "outside a group")):
        with pytest.raises(ConfigError, match=why):
            parse_nvinfer_config(bad)
    with pytest.raises(ConfigError, match="missing"):
        check_segmentation(parse_nvinfer_config(good)["property"])


@pytest.mark.parametrize("run", ["static", "dynamic"])
def test_deepstream_onnx_agrees_with_infer_dims_and_classes(exported, run):
    props = _properties(exported[run])
    session = ort.InferenceSession(str(exported[run] / "deepstream" / props["onnx-file"]),
                                   providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.type == "tensor(float)" and out.type == "tensor(float)"  # FP32 scores, as nvinfer parses them
    assert out.name == props["output-blob-names"][0]
    channels, h, w = props["infer-dims"]
    assert inp.shape[1] == channels and isinstance(inp.shape[0], str)  # batch dynamic: batch-size decides
    assert inp.shape[2:] == ([h, w] if run == "static" else ["height", "width"])
    x = np.full((props["batch-size"], channels, h, w), 100.0, np.float32)
    scores = session.run(None, {inp.name: x})[0]
    assert scores.shape == (props["batch-size"], props["num-detected-classes"], h, w)  # at the input size
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)  # class scores (softmax): threshold is a probability


def _nvinfer_preprocess(frames_rgb: np.ndarray, props: dict) -> np.ndarray:
    """nvinfer's documented preprocessing of uint8 frames: y = net-scale-factor * (x - offsets[c]), planar, in
    model-color-format's channel order (0 RGB, 1 BGR)."""
    x = frames_rgb.astype(np.float32)
    if props["model-color-format"] == 1:
        x = x[..., ::-1]
    y = props["net-scale-factor"] * (x - np.asarray(props["offsets"], np.float32))
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def _logits_tensor(path: Path, out: Path) -> str:
    """Cut the graph before its final Softmax: ``out`` gives the logits; returns that tensor's name."""
    model = onnx.load(str(path))
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmax) == 1 and softmax[0].output[0] == model.graph.output[0].name
    name = softmax[0].input[0]
    onnx.utils.extract_model(str(path), str(out), [model.graph.input[0].name], [name])
    return name


@pytest.mark.parametrize("run,normalization", [("static", "imagenet"), ("dynamic", "caffe")])
def test_nvinfer_preprocessing_reproduces_the_torch_path(exported, run, normalization, tmp_path):
    """0-255 frames through nvinfer's preprocessing and the DeepStream ONNX give torch's logits on
    ``meta.normalize``d frames: max |Δ| <= 1e-4 of the logit scale, argmax agreement >= 99.99 %."""
    from sfda_deploy.checkpoint import load_model

    props = _properties(exported[run])
    model, meta = load_model(exported["root"] / f"{run}.safetensors", "cpu")
    assert meta.channel_order == ("BGR" if normalization == "caffe" else "RGB")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, *SIZE, 3), dtype=np.uint8)
    with torch.no_grad():
        want = model(meta.normalize(torch.from_numpy(frames).permute(0, 3, 1, 2))).numpy()
    onnx_path = exported[run] / "deepstream" / props["onnx-file"]
    name = _logits_tensor(onnx_path, tmp_path / "logits.onnx")
    x = _nvinfer_preprocess(frames, props)
    got = ort.InferenceSession(str(tmp_path / "logits.onnx"), providers=["CPUExecutionProvider"]).run(
        [name], {"images": x})[0]
    scale = float(np.abs(want).max())
    assert scale > 0.1  # a model that says something
    assert float(np.abs(got - want).max()) <= 1e-4 * scale
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9999
    scores = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    np.testing.assert_allclose(scores, torch.from_numpy(want).softmax(1).numpy(), atol=1e-5)


def test_network_mode_follows_the_precision():
    from sfda_deploy.export.deepstream import engine_name, network_mode

    assert [network_mode(p) for p in ("fp32", "int8", "fp16")] == [0, 1, 2]
    assert engine_name("model.onnx", 4, 1, 2) == "model.onnx_b4_gpu1_fp16.engine"


# ------------------------------------------------------------------------------------------ Triton
def _model_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _triton_type(ort_type: str) -> str:
    return {"tensor(float)": "TYPE_FP32", "tensor(int32)": "TYPE_INT32", "tensor(uint8)": "TYPE_UINT8"}[ort_type]


def _check_against_onnx(config, onnx_path: Path) -> None:
    """Names, data types and dims of ``config`` (a ModelConfig) against the ONNX as ONNX Runtime reads it."""
    from tritonclient.grpc import model_config_pb2

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batched = config.max_batch_size > 0
    for tensors, declared in ((session.get_inputs(), config.input), (session.get_outputs(), config.output)):
        assert [t.name for t in tensors] == [d.name for d in declared]
        for tensor, decl in zip(tensors, declared):
            assert model_config_pb2.DataType.Name(decl.data_type) == _triton_type(tensor.type)
            shape = tensor.shape[1:] if batched else tensor.shape
            assert isinstance(tensor.shape[0], str) == batched  # Triton batches only a free batch dimension
            assert list(decl.dims) == [d if isinstance(d, int) else -1 for d in shape]


def test_triton_onnx_model_config_parses_and_matches_the_onnx(exported):
    repo = exported["static"] / "triton"
    name = "static"  # the run folder's name
    config = _model_config(repo / name / "config.pbtxt")
    assert config.name == name and config.backend == "onnxruntime"
    assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    assert [g.kind for g in config.instance_group] == [config.instance_group[0].KIND_CPU]  # no GPU here
    _check_against_onnx(config, repo / name / "1" / "model.onnx")
    warm = config.model_warmup[0]
    assert list(warm.inputs["images"].dims) == [3, *SIZE] and warm.inputs["images"].zero_data
    assert config.parameters["sfda_input"].string_value == "rgb_0_255"
    assert not (repo / f"{name}_trt").exists()  # no engine was built on this machine
    compile((repo / "client.py").read_text(), "client.py", "exec")


@pytest.mark.parametrize("run, gpus", [("static", False), ("dynamic", True)])
def test_the_serve_line_asks_for_gpus_only_for_gpu_instances(exported, run, gpus):
    line = next(x for x in (exported["root"] / f"{run}.said").read_text().splitlines() if x.startswith("Triton:"))
    assert "serve it with: docker run " in line and ("--gpus all" in line) == gpus


def test_triton_dynamic_mask_model_has_free_height_and_width(exported):
    repo = exported["dynamic"] / "triton"
    config = _model_config(repo / "seg" / "config.pbtxt")
    assert list(config.input[0].dims) == [3, -1, -1] and list(config.output[0].dims) == [-1, -1]
    assert config.output[0].name == "mask"
    _check_against_onnx(config, repo / "seg" / "1" / "model.onnx")
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU  # as asked
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP32"


@pytest.mark.parametrize("dynamic", [False, True])
def test_triton_plan_config_follows_the_engine_profile(exported, dynamic, tmp_path):
    """The ``tensorrt_plan`` model's config (no engine can be built here: checked against the ONNX the
    engine is built from, with the export's batch and profile)."""
    from sfda_deploy.export.export_settings import ExportSettings
    from sfda_deploy.export.targets import TargetJob, TritonOptions
    from sfda_deploy.export.triton import plan_model_config

    model = build_model("tiny", num_classes=19).eval()
    settings = ExportSettings(batch=2, dynamic=dynamic, max_batch=4 if dynamic else None)
    job = TargetJob(settings=settings, model=model, meta=ModelMeta(arch="tiny", input_size=SIZE), imgsz=SIZE, run_dir=tmp_path,
                    files={}, images=None, options=TritonOptions())
    config = _model_config_text(plan_model_config(job, "m_trt"), tmp_path)
    assert config.platform == "tensorrt_plan" and config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert config.parameters["sfda_input"].string_value == "normalized"
    if dynamic:
        assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
        assert list(config.input[0].dims) == [3, -1, -1] and list(config.output[0].dims) == [19, -1, -1]
    else:  # a static engine's batch is part of its shape
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert list(config.input[0].dims) == [2, 3, *SIZE] and list(config.output[0].dims) == [2, 19, *SIZE]
        from sfda_deploy.export.onnx import export_module

        proto = export_module(model, SIZE, 2, False, 18, "logits")
        onnx.save(proto, str(tmp_path / "static.onnx"))
        _check_against_onnx(config, tmp_path / "static.onnx")


def _model_config_text(text: str, tmp_path: Path):
    path = tmp_path / "config.pbtxt"
    path.write_text(text)
    return _model_config(path)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("args,fragments", [
    (["--triton", "--target-set", "triton.instance=2"], ["unknown option 'instance'", "instances"]),
    (["--target-set", "triton.instances=2"], ["add --triton"]),
    (["--triton", "--target-set", "triton.instances=0"], ["--target-set triton.instances"]),
    (["--triton", "--target-set", "triton.instance_kind=tpu"], ["instance_kind"]),
    (["--deepstream", "--int8", "--calib-data", "frames"], ["--deepstream with --int8"]),
])
def test_bad_target_options_fail_before_anything_is_written(invoke, tmp_path, args, fragments):
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    assert_user_error(invoke(["export", ckpt, *args]), *fragments)
    assert not (tmp_path / "runs" / "export").exists() or not any((tmp_path / "runs" / "export").iterdir())


def test_targets_need_the_checkpoint_not_an_onnx(invoke, session_files):
    assert_user_error(invoke(["export", session_files.onnx, "--trt", "--deepstream"]), "--deepstream",
                      ".safetensors")


def test_every_registered_target_has_its_flag(invoke):
    from sfda_deploy.errors import SfdaError
    from sfda_deploy.export.targets import TARGETS, get_target

    help_text = invoke(["export", "--help"]).output
    assert all(f"--{name}" in help_text for name in TARGETS) and {"deepstream", "triton"} <= set(TARGETS)
    with pytest.raises(SfdaError, match="did you mean 'triton'"):
        get_target("triton2")


def test_segment_refuses_the_serving_graph(exported, invoke, tmp_path):
    """The 0-255 graphs normalise inside: segment (which normalises first) must not run them."""
    from tests.runtime_data import make_video

    video = make_video(tmp_path / "v.mp4", n=2)
    for onnx_path in (exported["static"] / "deepstream" / "model.onnx",
                      exported["static"] / "triton" / "static" / "1" / "model.onnx"):
        assert_user_error(invoke(["segment", video, "--model", onnx_path]), "no sfda-deploy metadata")
