"""TensorRT side of export: version branching (fake modules), cache key, and a real parse/build of every
exported ONNX variant with TensorRT for RTX, whose Builder and OnnxParser run without a GPU.

A real ``tensorrt`` object is never created here: without a GPU it can crash the process.
"""
from __future__ import annotations

import importlib.util
import types

import pytest

from sfda_deploy.errors import SfdaError
from sfda_deploy.export import tensorrt as T
from sfda_deploy.runtime import engine_file as EF

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
SIZE = (32, 48)


def _fake_trt(version: str, strongly_typed: bool):
    enum = types.SimpleNamespace(**({"STRONGLY_TYPED": 1} if strongly_typed else {}))
    return types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=enum)


def test_network_flags_per_version():
    # 10.x and 11.x both expose STRONGLY_TYPED (= bit 1 → 1 << 1 = 2); 11.x ignores it, 10.x needs it
    # to keep the ONNX's fp16/int8 types. A module without the flag gets 0 (default typing).
    assert T.network_flags(_fake_trt("10.9.0", True)) == 2
    assert T.network_flags(_fake_trt("11.0.0", True)) == 2
    assert T.network_flags(_fake_trt("11.4.1", False)) == 0
    assert T.major_version(_fake_trt("10.3.0.26", True)) == 10
    assert T.major_version(_fake_trt("11.0.0", True)) == 11


def test_profile_shapes_static_and_dynamic():
    assert T.profile_shapes((64, 128), 2, False, 8) == {"min": [2, 3, 64, 128], "opt": [2, 3, 64, 128],
                                                        "max": [2, 3, 64, 128]}
    # dynamic: half size rounded down to the stride (36→32, 60→56); the max is the export's own batch and
    # size unless --max-batch/--max-imgsz raise it (TensorRT sizes activation memory for the max)
    d = T.profile_shapes((72, 120), 1, True, 8)
    assert d == {"min": [1, 3, 32, 56], "opt": [1, 3, 72, 120], "max": [1, 3, 72, 120]}
    d = T.profile_shapes((72, 120), 2, True, 8, max_batch=4, max_imgsz=(144, 240))
    assert d == {"min": [1, 3, 32, 56], "opt": [2, 3, 72, 120], "max": [4, 3, 144, 240]}


@pytest.mark.parametrize("kwargs, fragment", [
    ({"max_batch": 1}, "--max-batch 1 is below --batch 2"),
    ({"max_imgsz": (64, 128)}, "at least the export size 72 120"),
    ({"max_imgsz": (100, 240)}, "e.g. --max-imgsz 104 240"),
])
def test_profile_bounds_below_the_export_or_off_stride_are_refused(kwargs, fragment):
    with pytest.raises(SfdaError, match=fragment):
        T.profile_shapes((72, 120), 2, True, 8, **kwargs)
    with pytest.raises(SfdaError, match="add --dynamic"):
        T.profile_shapes((72, 120), 2, False, 8, max_batch=4)


def test_timing_cache_is_one_per_gpu_model_and_tensorrt_version(tmp_path, monkeypatch):
    a = T.timing_cache_path("10.9.0", "NVIDIA H100 80GB HBM3", tmp_path)
    assert a == tmp_path / "nvidia-h100-80gb-hbm3-trt10.9.0.timing-cache"
    assert T.timing_cache_path("11.0.0", "NVIDIA H100 80GB HBM3", tmp_path) != a
    assert T.timing_cache_path("10.9.0", "Orin (nvgpu)", tmp_path).name == "orin-nvgpu-trt10.9.0.timing-cache"
    monkeypatch.setenv("SFDA_DEPLOY_CACHE", str(tmp_path / "cache"))  # default root: the user cache dir
    assert T.timing_cache_path("10.9.0", "T4").parent == tmp_path / "cache" / "tensorrt"
    monkeypatch.delenv("SFDA_DEPLOY_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert T.timing_cache_path("10.9.0", "T4").parent == tmp_path / "xdg" / "sfda-deploy" / "tensorrt"


def test_uint8_mask_is_cast_through_float16():
    """TensorRT converts to UINT8 only from FLOAT/HALF: the exported graph must say ArgMax → fp16 → uint8."""
    import onnx

    from sfda_deploy.export.onnx import export_module
    from sfda_deploy.models import build_model

    proto = export_module(build_model("tiny", num_classes=19).eval(), SIZE, 1, False, 18, "mask", "uint8")
    producer = {out: node for node in proto.graph.node for out in node.output}
    last = producer[proto.graph.output[0].name]
    before = producer[last.input[0]]
    to = lambda node: onnx.helper.get_attribute_value(node.attribute[0])  # noqa: E731
    assert (last.op_type, to(last)) == ("Cast", onnx.TensorProto.UINT8)
    assert (before.op_type, to(before)) == ("Cast", onnx.TensorProto.FLOAT16)
    assert producer[before.input[0]].op_type == "ArgMax"
    int32 = export_module(build_model("tiny", num_classes=19).eval(), SIZE, 1, False, 18, "mask", "int32")
    assert int32.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_cache_key_is_what_the_runtime_checks(tmp_path):
    device = {"gpu": "NVIDIA H100", "compute_capability": "9.0"}
    key = EF.cache_key("10.9.0", device, {"min": [1]}, "fp16", "abc")
    assert key == {"tensorrt": "10.9.0", "gpu": "NVIDIA H100", "compute_capability": "9.0",
                   "shapes": {"min": [1]}, "precision": "fp16", "onnx_sha256": "abc"}
    engine = tmp_path / "m.engine"
    assert EF.check_engine_key(engine, key, {"tensorrt": "10.9.0", **device}) == []  # same: accepted
    with pytest.raises(SfdaError, match="TensorRT 10.9.0 \\(built\\) vs 11.0.0"):
        EF.check_engine_key(engine, key, {"tensorrt": "11.0.0", **device})
    with pytest.raises(SfdaError, match="compute capability 9.0 \\(built\\) vs 8.7"):
        EF.check_engine_key(engine, key, {"tensorrt": "10.9.0", "gpu": "Orin", "compute_capability": "8.7"})


def test_engine_device():
    # export's --device places the torch reference; engines are always built on a GPU
    assert T.engine_device("cpu") == "cuda" and T.engine_device("cuda:1") == "cuda:1"


def test_sidecar_roundtrip(tmp_path):
    from sfda_deploy.metadata import ModelMeta

    meta = ModelMeta(arch="tiny", input_size=SIZE)
    engine = tmp_path / "model.engine"
    EF.write_engine(engine, b"plan", {"meta": meta.to_dict(), "cache_key": {"tensorrt": "10.9.0"}})
    assert engine.read_bytes() == b"plan"  # plain engine file, no header
    got, key = EF.read_sidecar(engine)
    assert got == meta and key == {"tensorrt": "10.9.0"}
    EF.sidecar_path(engine).write_text("{not json")
    with pytest.raises(SfdaError, match="not valid JSON"):
        EF.read_sidecar(engine)


# ------------------------------------------------------------------ TensorRT-RTX (CPU build)
@pytest.fixture(scope="module")
def onnx_variants(tmp_path_factory):
    """static logits, dynamic logits, static mask (int32 and uint8), fp16, int8 Q/DQ of the tiny model."""
    import torch

    from sfda_deploy.data.frames import synthetic_frames
    from sfda_deploy.export.calibration import quantize_qdq
    from sfda_deploy.export.onnx import convert_fp16, export_module, save_onnx
    from sfda_deploy.metadata import ModelMeta
    from sfda_deploy.models import build_model

    root = tmp_path_factory.mktemp("variants")
    torch.manual_seed(0)
    model = build_model("tiny", num_classes=19).eval()
    meta = ModelMeta(arch="tiny", input_size=SIZE)
    paths = {}
    for name, dynamic, output, dtype in (("static", False, "logits", "int32"), ("dynamic", True, "logits", "int32"),
                                         ("mask", False, "mask", "int32"), ("mask_uint8", False, "mask", "uint8")):
        paths[name] = root / f"{name}.onnx"
        save_onnx(export_module(model, SIZE, 2 if dynamic else 1, dynamic, 18, output, dtype), meta, paths[name])
    paths["fp16"] = root / "fp16.onnx"
    convert_fp16(paths["static"], paths["fp16"], meta)
    paths["int8"] = root / "int8.onnx"
    quantize_qdq(paths["static"], paths["int8"], synthetic_frames(SIZE, 4), meta)
    return paths


@pytest.mark.slow  # end to end (seconds to a minute): left out by `make test-fast`
@pytest.mark.skipif(not HAS_RTX, reason="tensorrt-rtx is not installed (pip install 'sfda-deploy[trt-rtx]'; "
                                        "make test installs it): the CPU parse/build check cannot run")
@pytest.mark.parametrize("variant", ["static", "dynamic", "mask", "mask_uint8", "fp16", "int8"])
def test_tensorrt_rtx_parses_and_builds(onnx_variants, variant, tmp_path):
    import tensorrt_rtx

    shapes = T.profile_shapes(SIZE, 1, variant == "dynamic", 8)
    cache = T.timing_cache_path(tensorrt_rtx.__version__, "cpu build", tmp_path)
    plan = T.build_serialized(tensorrt_rtx, onnx_variants[variant], shapes, workspace_gb=0.25, timing_cache=cache)
    assert len(plan) > 1000
    assert cache.is_file()


@pytest.mark.skipif(not HAS_RTX, reason="tensorrt-rtx is not installed (pip install 'sfda-deploy[trt-rtx]')")
def test_int8_onnx_leaves_no_fp32_convolution_for_a_strongly_typed_network(onnx_variants):
    """TensorRT 11 takes precision from the graph: the Q/DQ ONNX's convolutions must be fp16, not fp32."""
    import tensorrt_rtx as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network, _parser = T.parse_onnx(trt, builder, logger, onnx_variants["int8"])
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    convs = [la.get_output(0).dtype for la in layers if la.type == trt.LayerType.CONVOLUTION]
    assert convs and all(d == trt.DataType.HALF for d in convs)
    assert any(la.type == trt.LayerType.QUANTIZE for la in layers)  # still an INT8 (Q/DQ) network


@pytest.mark.skipif(not HAS_RTX, reason="tensorrt-rtx is not installed (pip install 'sfda-deploy[trt-rtx]')")
def test_tensorrt_rtx_uint8_mask_network_casts_half_to_uint8(onnx_variants):
    import tensorrt_rtx as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network, _parser = T.parse_onnx(trt, builder, logger, onnx_variants["mask_uint8"])
    out = network.get_output(0)
    assert out.dtype == trt.DataType.UINT8
    last = next(network.get_layer(i) for i in range(network.num_layers)
                if any(network.get_layer(i).get_output(j).name == out.name
                       for j in range(network.get_layer(i).num_outputs)))
    assert last.get_input(0).dtype == trt.DataType.HALF


@pytest.mark.skipif(not HAS_RTX, reason="tensorrt-rtx is not installed (pip install 'sfda-deploy[trt-rtx]')")
def test_tensorrt_rtx_dynamic_profile_uses_the_networks_input_name(tmp_path):
    """The profile is set on the network's own input, whatever the metadata says (an ONNX named ``x``)."""
    import onnx
    import tensorrt_rtx

    h = onnx.helper
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 3, "height", "width"])
    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    path = tmp_path / "x.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), str(path))
    plan = T.build_serialized(tensorrt_rtx, path, T.profile_shapes((8, 8), 1, True, 8, 2, (16, 16)), 0.25)
    assert len(plan) > 100


@pytest.mark.skipif(not HAS_RTX, reason="tensorrt-rtx is not installed (pip install 'sfda-deploy[trt-rtx]')")
def test_builder_config_turns_tf32_off_and_adds_a_profile_for_dynamic_inputs(onnx_variants):
    import tensorrt_rtx as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    for variant, profiles in (("static", 0), ("dynamic", 1)):
        network, _parser = T.parse_onnx(trt, builder, logger, onnx_variants[variant])
        assert builder.create_builder_config().get_flag(trt.BuilderFlag.TF32)  # TensorRT's default: on
        config = T.builder_config(trt, builder, network, T.profile_shapes(SIZE, 1, variant == "dynamic", 8), 0.25)
        assert not config.get_flag(trt.BuilderFlag.TF32), variant
        assert config.num_optimization_profiles == profiles, variant


@pytest.mark.skipif(not HAS_RTX, reason="tensorrt-rtx is not installed (pip install 'sfda-deploy[trt-rtx]')")
def test_tensorrt_rtx_parser_errors_are_reported(tmp_path, capsys):
    import onnx
    import tensorrt_rtx

    h = onnx.helper
    x = h.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    graph = h.make_graph([h.make_node("NoSuchOp", ["images"], ["y"], domain="example.custom")], "bad", [x], [y])
    path = tmp_path / "bad.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid("example.custom", 1)]),
              str(path))
    with pytest.raises(SfdaError, match="cannot parse"):
        T.build_serialized(tensorrt_rtx, path, T.profile_shapes((8, 8), 1, False, 8), 0.25)
    assert "TensorRT ONNX parser:" in capsys.readouterr().out
