"""``sfda_deploy.device``: the one parser of ``--device`` (strings and ``torch.device`` alike)."""
from __future__ import annotations

import pytest
import torch

from sfda_deploy.device import device_name, is_cuda, parse_device, select_device
from sfda_deploy.errors import SfdaError


def test_names_are_read_the_same_from_strings_and_torch_devices():
    assert device_name(" CPU ") == "cpu" and device_name(None) == "cpu" and device_name("") == "cpu"
    assert device_name("cuda") == "cuda" and device_name("Cuda:1") == "cuda:1"
    assert device_name(torch.device("cpu")) == "cpu" and device_name(torch.device("cuda", 2)) == "cuda:2"
    for bad in ("gpu", "cuda:x", "mps", "cuda:"):
        with pytest.raises(SfdaError, match="unknown device"):
            device_name(bad)


def test_is_cuda():
    assert is_cuda("cuda") and is_cuda("CUDA:0") and is_cuda(torch.device("cuda", 1))
    assert not is_cuda("cpu") and not is_cuda(None) and not is_cuda(torch.device("cpu"))


def test_cpu_parses_and_selects_without_a_gpu():
    assert parse_device("cpu") == "cpu" and parse_device(torch.device("cpu")) == "cpu"
    assert select_device("cpu") == torch.device("cpu") and select_device(torch.device("cpu"), 3) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_names_the_fix():
    for ask in ("cuda", "cuda:1", torch.device("cuda", 0)):
        with pytest.raises(SfdaError, match="no CUDA GPU is visible to torch: use --device cpu"):
            parse_device(ask)
        with pytest.raises(SfdaError, match="no CUDA GPU"):
            select_device(ask)


def test_an_index_past_the_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_device("cuda") == "cuda:0" and parse_device("cuda:1") == "cuda:1"
    with pytest.raises(SfdaError, match="only 2 GPUs here: pick cuda:0..cuda:1"):
        parse_device("cuda:2")
