"""Devices: the one place a ``--device`` value (a string or a ``torch.device``) is parsed and checked.

Layer 1 (imports only ``errors`` and ``messages``): runtime, adapt, export, evaluate and the demo all
take their device through here, so ``cpu``, ``cuda`` and ``cuda:N`` mean the same everywhere.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Union

import torch

from sfda_deploy.errors import SfdaError
from sfda_deploy.messages import plural

DeviceLike = Union[str, torch.device, None]


def device_name(device: DeviceLike) -> str:
    """``cpu`` | ``cuda`` | ``cuda:N`` (any case, a ``torch.device`` too) → the lower-case name, syntax only.

    No GPU is needed: this is for code that hands the name on (ONNX Runtime picks its own providers).

    Raises:
        SfdaError: anything else (``gpu``, ``cuda:x``, ``mps``).
    """
    name = str(device if device is not None else "cpu").strip().lower() or "cpu"
    if name in ("cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise SfdaError(f"unknown device '{name}': use cpu, cuda or cuda:N")


def is_cuda(device: DeviceLike) -> bool:
    """True for ``cuda`` / ``cuda:N`` (string or ``torch.device``), False for the CPU (and for None)."""
    return str(device if device is not None else "cpu").strip().lower().startswith("cuda")


@functools.lru_cache(maxsize=1)
def cpu_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX), from Linux's CPU flags.

    oneDNN emulates bf16 on other CPUs, which is slower than fp32, so bf16 is used only where this holds.
    False where the flags cannot be read (not Linux).
    """
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def require_cuda(name: str) -> None:
    """Raise the one message for a CUDA device asked for where torch sees no GPU."""
    if not torch.cuda.is_available():
        raise SfdaError(f"--device {name} was asked for but no CUDA GPU is visible to torch: "
                        "use --device cpu (or install a CUDA build of torch)")


def parse_device(device: DeviceLike) -> str:
    """``cpu`` | ``cuda`` | ``cuda:N`` → canonical ``cpu`` or ``cuda:N``, the GPU checked to exist.

    Raises:
        SfdaError: an unknown name, CUDA without a GPU, or an index past the GPUs there are.
    """
    name = device_name(device)
    if name == "cpu":
        return "cpu"
    require_cuda(name)
    index = int(name[5:]) if ":" in name else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise SfdaError(f"--device {name}: only {plural(count, 'GPU')} here: pick cuda:0..cuda:{count - 1}")
    return f"cuda:{index}"


def select_device(device: DeviceLike, local_rank: Optional[int] = None) -> torch.device:
    """The ``torch.device`` a training or evaluation process runs on, made the current CUDA device.

    Args:
        device: the job's ``--device``.
        local_rank: under torchrun, this process's local rank: a CUDA job runs on ``cuda:local_rank``
            whatever N says (None: a single process, ``cuda:N`` as given).
    """
    name = device_name(device)
    if name == "cpu":
        return torch.device("cpu")
    require_cuda(name)
    chosen = torch.device("cuda", local_rank if local_rank is not None else torch.device(name).index or 0)
    torch.cuda.set_device(chosen)  # cuda:N is the current device too: kernels, streams, caches go there
    return chosen


def gpu_info(device: str = "cuda") -> dict[str, str]:
    """Name and compute capability of a CUDA device: the GPU half of an engine's build key."""
    index = torch.device(device).index or 0
    return {"gpu": torch.cuda.get_device_name(index),
            "compute_capability": "%d.%d" % torch.cuda.get_device_capability(index)}
