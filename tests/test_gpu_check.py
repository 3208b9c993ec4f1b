"""scripts/gpu_check.py on a machine without CUDA: one clear line, status 2, nothing run (the GPU rows
themselves can only run on a GPU)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA GPU")
def test_without_cuda_it_says_so_and_exits_2(tmp_path):
    out = tmp_path / "table.md"
    r = subprocess.run([sys.executable, "-m", "scripts.gpu_check", "--out", str(out)], cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU visible to torch" in lines[0] and "nothing was run" in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == "" and not out.exists()


def test_bf16_peak_by_gpu_name():
    from scripts import gpu_check

    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756  # the longer, more specific name wins
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_check.peak_tflops("Tesla T4") is None  # unknown: no share is printed
