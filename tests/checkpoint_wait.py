"""Waiting for a running ``adapt`` process to reach a point of its run (before killing it in a test)."""
from __future__ import annotations

import time
from pathlib import Path

import torch


def wait_for_checkpoint(run_dir: Path, stage_index: int, iteration: int, timeout: float = 300) -> None:
    """Return once ``run_dir/last.pt`` records stage ``stage_index`` at ``iteration`` or later (or at timeout)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            state = torch.load(Path(run_dir) / "last.pt", weights_only=True)
            if state["stage_index"] == stage_index and state["iteration"] >= iteration:
                return
        except Exception:  # not written yet, or being renamed
            pass
        time.sleep(0.05)
