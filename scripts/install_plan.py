"""Which install route this machine takes (``make install`` asks; standard library only, no venv yet).

Routes (README, "Install"):
  jetson  a Jetson/DRIVE board (``/etc/nv_tegra_release``; JetPack has no nvidia-smi): JetPack 6's system
          TensorRT 10 (seen through ``--system-site-packages``), NVIDIA's Jetson torch and onnxruntime-gpu.
  cuda13  x86 with a driver >= 580: CUDA 13 torch, TensorRT 11 (``tensorrt``), onnxruntime-gpu.
  cuda12  x86 with a driver 525-579: CUDA 12.6 torch, TensorRT 10 (``tensorrt-cu12``), onnxruntime-gpu.
  cpu     no NVIDIA GPU (or a driver older than 525): CPU torch and onnxruntime.

    python3 -m scripts.install_plan                 # prints the route, e.g. "cuda13"
    python3 -m scripts.install_plan --explain       # and why
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
CUDA13_MIN_DRIVER = 580  # CUDA 13.0 needs an r580 driver; TensorRT 11 wheels are built for CUDA 13
CUDA12_MIN_DRIVER = 525  # CUDA 12.x with minor-version compatibility
JETPACK6_L4T = 36        # L4T R36 = JetPack 6 (TensorRT 10); R35 = JetPack 5 (TensorRT 8.5: no engines here)


def l4t_release(text: str) -> Optional[int]:
    """The L4T major release in ``/etc/nv_tegra_release`` ("# R36 (release), REVISION: 4.0, ..." → 36)."""
    match = re.search(r"R(\d+)", text)
    return int(match.group(1)) if match else None


def driver_major(smi_output: Optional[str]) -> Optional[int]:
    """Major driver version from ``nvidia-smi --query-gpu=driver_version --format=csv,noheader`` output."""
    if not smi_output:
        return None
    match = re.match(r"\s*(\d+)\.", smi_output)
    return int(match.group(1)) if match else None


def choose_route(tegra_text: Optional[str], smi_output: Optional[str]) -> tuple[str, str]:
    """(route, reason) from what the machine shows (pure: file text and command output in).

    Args:
        tegra_text: contents of ``/etc/nv_tegra_release``, None when absent.
        smi_output: driver version line(s) from nvidia-smi, None when it is missing or fails.
    """
    if tegra_text is not None:
        release = l4t_release(tegra_text)
        note = "" if release is None or release >= JETPACK6_L4T else (
            f"; L4T R{release} is older than JetPack 6: torch works, TensorRT engines need JetPack 6 (TensorRT 10)")
        return "jetson", f"Jetson/DRIVE board (L4T R{release}){note}"
    major = driver_major(smi_output)
    if major is None:
        return "cpu", "no NVIDIA driver found (nvidia-smi missing or failing)"
    if major >= CUDA13_MIN_DRIVER:
        return "cuda13", f"NVIDIA driver {major} >= {CUDA13_MIN_DRIVER}: CUDA 13, TensorRT 11"
    if major >= CUDA12_MIN_DRIVER:
        return "cuda12", f"NVIDIA driver {major} < {CUDA13_MIN_DRIVER}: CUDA 12, TensorRT 10"
    return "cpu", f"NVIDIA driver {major} is older than {CUDA12_MIN_DRIVER}: update it for GPU support"


def read_machine(tegra_release: Path) -> tuple[Optional[str], Optional[str]]:
    """(tegra release text, nvidia-smi driver output) of this machine."""
    tegra = tegra_release.read_text(errors="replace") if tegra_release.is_file() else None
    smi = None
    if shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            smi = r.stdout if r.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            smi = None
    return tegra, smi


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Print this machine's install route (jetson, cuda13, cuda12, cpu).")
    parser.add_argument("--tegra-release", type=Path, default=TEGRA_RELEASE,
                        help="the L4T release file that marks a Jetson/DRIVE board")
    parser.add_argument("--explain", action="store_true", help="also print why (on stderr)")
    args = parser.parse_args(argv)
    route, reason = choose_route(*read_machine(args.tegra_release))
    print(route)
    if args.explain:
        print(f"install route {route}: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
