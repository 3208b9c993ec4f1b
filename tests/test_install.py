"""Install routes: one ONNX Runtime per route (pyproject extras + Makefile), and the route each machine gets
(scripts/install_plan.py, fed fake machine facts: a Jetson's release file, nvidia-smi's driver line)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

from scripts import install_plan

ROOT = Path(__file__).resolve().parents[1]

ORT = ("onnxruntime", "onnxruntime-gpu")
PULLS_ORT_GPU = {"modelopt"}  # nvidia-modelopt[onnx] depends on onnxruntime-gpu


def _name(requirement: str) -> str:
    return re.split(r"[<>=!\[;\s]", requirement, maxsplit=1)[0].lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _makefile_routes() -> dict[str, list[str]]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1): m.group(2).split(",") for m in re.finditer(r"^EXTRAS_(\w+)\s*\?=\s*(\S+)", text, re.M)}


def _runtimes(extras: list[str]) -> set[str]:
    optional = _project()["optional-dependencies"]
    found = {_name(r) for e in extras for r in optional[e] if _name(r) in ORT}
    return found | ({"onnxruntime-gpu"} if PULLS_ORT_GPU & set(extras) else set())


def test_onnxruntime_is_not_a_core_dependency_and_cpu_gpu_are_separate_extras():
    project = _project()
    assert not {_name(r) for r in project["dependencies"]} & set(ORT)
    optional = project["optional-dependencies"]
    assert [_name(r) for r in optional["cpu"]] == ["onnxruntime"]
    assert [_name(r) for r in optional["gpu"]] == ["onnxruntime-gpu"]
    for extra, requirements in optional.items():  # no other extra brings a runtime of its own
        if extra not in ("cpu", "gpu"):
            assert not {_name(r) for r in requirements} & set(ORT), extra


def test_every_make_route_installs_exactly_one_onnx_runtime():
    routes = _makefile_routes()
    assert set(routes) == {"cpu", "cuda13", "cuda12", "jetson"}
    assert _runtimes(routes["cpu"]) == {"onnxruntime"}
    assert _runtimes(routes["cuda13"]) == _runtimes(routes["cuda12"]) == {"onnxruntime-gpu"}
    assert _runtimes(routes["jetson"]) == set()  # ...its onnxruntime-gpu comes from NVIDIA's Jetson index:
    jetson = re.search(r"^\s*jetson\)(.*?);;", (ROOT / "Makefile").read_text(), re.M | re.S).group(1)
    assert "onnxruntime-gpu --index-url $(JETSON_INDEX)" in jetson and "--system-site-packages" in jetson
    assert "trt" not in routes["jetson"]  # JetPack's system TensorRT 10, no wheels
    optional = _project()["optional-dependencies"]
    assert "tensorrt" in {_name(r) for r in optional["trt"]} and "trt" in routes["cuda13"]
    assert optional["trt-cu12"] == ["tensorrt-cu12>=10.0,<11"] and "trt-cu12" in routes["cuda12"]


@pytest.mark.parametrize("tegra, smi, route", [
    ("# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n", None, "jetson"),
    ("# R36 (release), REVISION: 4.0\n", "540.4.0\n", "jetson"),  # the board file wins
    (None, "580.65.06\n", "cuda13"),
    (None, "575.57.08\n", "cuda12"),
    (None, "535.247.01\n535.247.01\n", "cuda12"),  # two GPUs: two lines
    (None, "470.256.02\n", "cpu"),   # too old for CUDA 12
    (None, None, "cpu"),
])
def test_route_from_machine_facts(tegra, smi, route):
    assert install_plan.choose_route(tegra, smi)[0] == route


def test_old_jetpack_is_told_engines_need_jetpack_6():
    route, reason = install_plan.choose_route("# R35 (release), REVISION: 5.0\n", None)
    assert route == "jetson" and "JetPack 6" in reason


def test_jetson_is_detected_from_the_release_file_without_nvidia_smi(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(install_plan.shutil, "which", lambda name: None)  # JetPack has no nvidia-smi
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.3\n")
    assert install_plan.main(["--tegra-release", str(release)]) == 0
    assert capsys.readouterr().out.strip() == "jetson"
    assert install_plan.main(["--tegra-release", str(tmp_path / "absent")]) == 0
    assert capsys.readouterr().out.strip() == "cpu"
