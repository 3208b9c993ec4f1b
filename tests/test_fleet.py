"""segment SOURCE... --ray: a local 2-CPU Ray cluster over 3 small videos, one corrupt (the good ones'
outputs identical to sequential segment, the bad one reported), the worker plan, and Ray missing."""
from __future__ import annotations

import json
import sys

import pytest

from sfda_deploy.commands.fleet import plan_actors, source_names
from sfda_deploy.errors import SfdaError
from tests.conftest import assert_user_error
from tests.runtime_data import make_checkpoint, make_video


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster of 2 CPUs for the module (Ray's start-up takes seconds)."""
    import ray  # in the dev extra (make test installs it): a missing Ray fails here, it is never skipped

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.slow  # a Ray cluster: seconds to start
def test_ray_fleet_matches_sequential_segment_and_reports_the_corrupt_file(ray_cluster, invoke, tmp_path):
    model = make_checkpoint(tmp_path / "tiny.safetensors")
    videos = [make_video(tmp_path / "a.mp4", n=7), tmp_path / "bad.mp4", make_video(tmp_path / "b.mp4", n=5)]
    videos[1].write_bytes(b"\x00not a video" * 64)
    common = ["--model", model, "--save-masks"]
    result = invoke(["segment", *videos, *common, "--ray", "--name", "fleet"])
    assert result.exit_code == 2 and "Traceback" not in result.output  # after the bar: one error line, last
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 source failed twice") and "bad.mp4" in last and "cannot be opened" in last
    fleet = tmp_path / "runs" / "segment" / "fleet"
    summary = json.loads((fleet / "summary.json").read_text())
    status = {r["source"].rsplit("/", 1)[-1]: r for r in summary["sources"]}
    assert status["bad.mp4"]["status"] == "failed" and status["bad.mp4"]["attempts"] == 2
    assert status["a.mp4"]["status"] == status["b.mp4"]["status"] == "ok"
    assert summary["workers"] == 2 and summary["frames"] == 12
    assert not (fleet / "sources" / "bad.mp4").exists()  # nothing half-written for the failed one
    assert not (fleet / "INCOMPLETE").exists()
    for video in (videos[0], videos[2]):
        seq_result = invoke(["segment", video, *common, "--name", f"seq-{video.stem}"])
        assert seq_result.exit_code == 0, seq_result.output
        seq, par = tmp_path / "runs" / "segment" / f"seq-{video.stem}", fleet / "sources" / video.name
        files = sorted(p.relative_to(seq) for p in seq.rglob("*") if p.is_file() and p.name != "log.txt")
        assert files == sorted(p.relative_to(par) for p in par.rglob("*") if p.is_file())
        for rel in files:
            if rel.suffix in (".png", ".mp4"):
                assert (seq / rel).read_bytes() == (par / rel).read_bytes(), rel
        a, b = (json.loads((d / "summary.json").read_text()) for d in (seq, par))
        assert a["per_frame"] == b["per_frame"] and a["frames"] == b["frames"]


def test_several_sources_need_ray(invoke, tmp_path):
    videos = [make_video(tmp_path / f"{n}.mp4", n=2) for n in "ab"]
    assert_user_error(invoke(["segment", *videos]), "2 sources given", "--ray")


def test_ray_missing_is_one_line_with_the_install_command(invoke, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError, as without the package
    video = make_video(tmp_path / "a.mp4", n=2)
    assert_user_error(invoke(["segment", video, "--ray"]), "pip install 'sfda-deploy[ray]'")


def test_worker_plan_one_per_gpu_or_cpu_slot():
    cpu = plan_actors({"CPU": 8.0}, "cpu", 2, None, sources=10)
    assert (cpu.count, cpu.num_cpus, cpu.num_gpus, cpu.device) == (4, 2.0, 0.0, "cpu")
    assert plan_actors({"CPU": 8.0}, "cpu", None, None, sources=3).count == 3  # no idle workers
    gpu = plan_actors({"CPU": 32.0, "GPU": 4.0}, "cuda", None, None, sources=10)
    assert (gpu.count, gpu.num_gpus, gpu.device) == (4, 1.0, "cuda")
    with pytest.raises(SfdaError, match="no GPU"):
        plan_actors({"CPU": 8.0}, "cuda:0", None, None, sources=2)
    with pytest.raises(SfdaError, match="--ray-actors 2 or fewer"):
        plan_actors({"CPU": 2.0}, "cpu", 1, 3, sources=5)


def test_source_folders_are_unique():
    assert source_names(["/d/a.mp4", "/e/a.mp4", "frames/", "a.mp4"]) == ["a.mp4", "a.mp4-2", "frames", "a.mp4-3"]
