"""``sfda-deploy benchmark``: latency statistics (known answers) and the command's outputs."""
from __future__ import annotations

import json

import pytest
import torch

from sfda_deploy.errors import SfdaError
from sfda_deploy.runtime.backends import load_backend
from sfda_deploy.runtime.bench import latency_stats, time_backend
from tests.conftest import assert_user_error
from tests.runtime_data import make_checkpoint, make_onnx


def test_latency_stats_known_answer():
    # 10 calls of 1..10 ms, batch 2. mean = 55/10 = 5.5 ms → fps = 2 / 0.0055 = 363.636.
    # numpy's linear percentile: position p/100 * (n-1) in the sorted list (0-based):
    # p50: 4.5 → 5 + 0.5*(6-5) = 5.5; p90: 8.1 → 9 + 0.1*(10-9) = 9.1; p99: 8.91 → 9.91.
    # spread: p25 at 2.25 → 3.25, p75 at 6.75 → 7.75; (7.75 - 3.25) / 5.5 = 81.82 %. fps from the median 5.5.
    s = latency_stats([k / 1000 for k in range(10, 0, -1)], batch=2)
    assert s == {"mean_ms": 5.5, "p50_ms": 5.5, "p90_ms": 9.1, "p99_ms": 9.91, "spread_pct": 81.82, "fps": 363.636}
    with pytest.raises(SfdaError, match="--iters"):
        latency_stats([], 1)


def test_time_backend_counts_only_timed_iterations():
    class Fake:
        name, device, providers, notes = "fake", "cpu", ["x"], []
        input_size, batch, output_kind = (4, 6), 3, "logits"

        class meta:
            arch, class_set = "tiny", "cityscapes19"

        def __init__(self):
            self.infers, self.synced = 0, 0

        def preprocess(self, frames):
            assert frames.shape == (3, 4, 6, 3)
            return frames

        def infer(self, x):
            self.infers += 1

        def synchronize(self):
            self.synced += 1

    ticks = iter(range(0, 1000, 2))  # every clock() call advances 2 ms: each call lasts 2 ms
    fake = Fake()
    row = time_backend(fake, warmup=5, iters=4, progress=False, clock=lambda: next(ticks) / 1000)
    assert (fake.infers, fake.synced) == (9, 1)
    assert (row["mean_ms"], row["p99_ms"], row["fps"], row["iters"]) == (2.0, 2.0, 1500.0, 4)


def test_benchmark_cli_json_and_compare(invoke, tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    onnx_file = make_onnx(tmp_path / "tiny.onnx")
    result = invoke(["benchmark", "--model", ckpt, "--warmup", 1, "--iters", 3, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["backend"] == "torch" and row["input_size"] == [32, 64] and row["fps"] > 0
    assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    result = invoke(["benchmark", "--compare", ckpt, onnx_file, "--imgsz", 64, 96,  # the issue's --compare A B
                     "--warmup", 0, "--iters", 2])
    assert result.exit_code == 0, result.output
    assert "p90 ms" in result.output and "onnxruntime" in result.output
    run = tmp_path / "runs" / "benchmark" / "benchmark-2"
    rows = json.loads((run / "results.json").read_text())
    assert [r["backend"] for r in rows] == ["torch", "onnxruntime"]
    assert all(r["input_size"] == [64, 96] for r in rows)
    assert (run / "fps.png").stat().st_size > 1000
    # the other spellings: the flag repeated, and one positional model (= --model)
    result = invoke(["benchmark", "--compare", ckpt, "--compare", onnx_file, "--warmup", 0, "--iters", 1, "--json"])
    assert [r["backend"] for r in json.loads(result.stdout)] == ["torch", "onnxruntime"]
    result = invoke(["benchmark", onnx_file, "--warmup", 0, "--iters", 1, "--json"])
    assert [r["backend"] for r in json.loads(result.stdout)] == ["onnxruntime"]


def test_benchmark_bad_inputs(invoke, tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    assert_user_error(invoke(["benchmark", "--model", tmp_path / "nope.onnx"]), "does not exist")
    assert_user_error(invoke(["benchmark", "--model", ckpt, "--iters", 0]), "--iters")
    assert_user_error(invoke(["benchmark", "--model", ckpt, "--threads", 0]), "--threads 0 is not allowed: use an integer >= 1")
    assert_user_error(invoke(["benchmark", "--compare", ckpt, "--compare", tmp_path / "x.onnx"]),
                      "does not exist")
    assert_user_error(invoke(["benchmark", "--compare", ckpt, tmp_path / "x.onnx"]), "does not exist")
    assert_user_error(invoke(["benchmark", ckpt, "--model", ckpt]), "two models given", "--compare A B")
    assert not (tmp_path / "runs" / "benchmark").exists()


def test_threads_reach_torch_and_onnxruntime(invoke, tmp_path):
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    onnx_file = make_onnx(tmp_path / "tiny.onnx")
    before = torch.get_num_threads()
    try:
        result = invoke(["benchmark", "--compare", ckpt, "--compare", onnx_file, "--threads", 1,
                         "--warmup", 0, "--iters", 1, "--json"])
        assert result.exit_code == 0, result.output
        assert [(r["backend"], r["threads"]) for r in json.loads(result.stdout)] == [("torch", 1),
                                                                                   ("onnxruntime", 1)]
        torch.set_num_threads(2)
        backend = load_backend(str(onnx_file), threads=2)
        options = backend.session.get_session_options()
        assert options.intra_op_num_threads == 2
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert torch.get_num_threads() == 2  # ONNX Runtime's logits go through torch's argmax
        backend = load_backend(str(ckpt), threads=1)
        assert (backend.threads, torch.get_num_threads()) == (1, 1)
    finally:
        torch.set_num_threads(before)


def test_ort_opt_reaches_the_session(invoke, tmp_path):
    import onnxruntime as ort

    level = lambda b: b.session.get_session_options().graph_optimization_level  # noqa: E731
    onnx_file = make_onnx(tmp_path / "tiny.onnx")
    default = load_backend(str(onnx_file))
    assert (default.optimization, level(default)) == ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    for name, value in (("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
                        ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)):
        assert level(load_backend(str(onnx_file), ort_opt=name)) == value
    with pytest.raises(SfdaError, match="unknown --ort-opt 'fast': use one of auto, all, extended, basic"):
        load_backend(str(onnx_file), ort_opt="fast")
    result = invoke(["benchmark", "--model", onnx_file, "--ort-opt", "extended", "--warmup", 0, "--iters", 1,
                     "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["ort_optimization"] == "extended"
    assert_user_error(invoke(["benchmark", "--model", onnx_file, "--ort-opt", "fast"]), "--ort-opt")


def test_onnxruntime_cuda_that_ends_on_cpu_is_an_error(invoke, tmp_path, monkeypatch):
    """``--device cuda`` must not run on CPU unnoticed: the providers ONNX Runtime really uses are checked."""
    import onnxruntime as ort

    from sfda_deploy.onnxrt import create_session

    onnx_file = make_onnx(tmp_path / "tiny.onnx")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the CPU-only paths are what this test checks")
    with pytest.raises(SfdaError, match="--device cuda was asked for but ONNX Runtime runs on CPUExecutionProvider"):
        create_session(onnx_file, device="cuda")
    # a build that LISTS the CUDA provider but cannot start it (no GPU, missing CUDA libraries) falls
    # back to CPU with only a warning: the check after the session is made must catch that too
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available])
    with pytest.raises(SfdaError, match="runs on CPUExecutionProvider"):
        create_session(onnx_file, device="cuda:0")
    assert_user_error(invoke(["benchmark", onnx_file, "--device", "cuda", "--iters", 1]),
                      "--device cuda was asked for", "--device cpu")
    session, used = create_session(onnx_file, device="cpu")
    assert used == ["CPUExecutionProvider"] == session.get_providers()


def test_models_to_time_reads_the_arguments_like_the_flags():
    from sfda_deploy.commands.benchmark import models_to_time

    assert models_to_time(("a.onnx",), None, ()) == {"model": "a.onnx"}
    assert models_to_time(("a.onnx", "b.onnx"), None, ()) == {"compare": ("a.onnx", "b.onnx")}
    assert models_to_time(("c.onnx",), None, ("a.onnx", "b.onnx")) == {"compare": ("a.onnx", "b.onnx", "c.onnx")}
    assert models_to_time((), "m.onnx", ()) == {}  # --model alone: the config keeps it
    with pytest.raises(SfdaError, match="two models given"):
        models_to_time(("a.onnx",), "m.onnx", ())
