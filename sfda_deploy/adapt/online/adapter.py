"""``segment --adapt``: the pipeline plug-in that adapts the torch backend's network while it segments.

The infer thread calls ``observe`` after each inference with the batch it just ran (already resized and
normalised): the plug-in keeps the last ``batch`` frames (a fixed-size ring: memory does not grow with
the stream) and every ``every`` frames takes one update step (``sfda_deploy.adapt.online``). Frames
are predicted before they are adapted on (the online protocol). Decode and encode keep their threads;
the update runs in the infer thread, between two batches, and is timed apart from inference.
"""
from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import Any, Callable, Optional, Sequence

import torch

from sfda_deploy.adapt.online.drift import DriftConfig
from sfda_deploy.adapt.online.session import start, update
from sfda_deploy.data.sources import FrameInfo
from sfda_deploy.device import is_cuda
from sfda_deploy.errors import SfdaError

MAX_EVENTS = 100  # reset events kept for summary.json (the count is exact; the list is bounded)


def check_adapt_every(every: int) -> int:
    if every < 1:
        raise SfdaError(f"--adapt-every must be >= 1 (one update per K frames), got {every}")
    return every


class OnlineAdapter:
    """Adapts ``backend.model`` in place (a ``TorchBackend`` loaded with ``adaptable=True``).

    Args:
        backend: the torch backend whose network predicts.
        method: a name of ``sfda_deploy.adapt.online.ONLINE_METHODS``.
        every: one update per ``every`` frames.
        options: method hyper-parameters (``lr``, ``batch``, ...); defaults in the method's config.
        reset: run the drift detector and reset to the anchor when it fires.
        log: called with one line per reset.
    """

    def __init__(self, backend, method: str, every: int, options: Optional[dict[str, Any]] = None,
                 reset: bool = True, log: Optional[Callable[[str], None]] = None, seed: int = 0):
        if backend.name != "torch":
            raise SfdaError(f"--adapt needs the torch backend, not {backend.name}: pass the .safetensors "
                            "checkpoint the ONNX/engine was exported from")
        self.every = check_adapt_every(every)
        self.state = start(backend.model, method, options, seed)
        self.drift = DriftConfig() if reset else None
        self.log = log or (lambda line: None)
        self.cuda = is_cuda(backend.device)
        self.recent: deque = deque(maxlen=self.state.cfg.batch)
        self.pending = 0
        self.seconds = 0.0
        self.events: deque = deque(maxlen=MAX_EVENTS)

    def observe(self, inputs: torch.Tensor, infos: Sequence[FrameInfo]) -> None:
        """After inference of ``infos``' frames: ``inputs`` ``[B,3,h,w]`` is their network input (maybe padded)."""
        for i in range(len(infos)):
            self.recent.append(inputs[i:i + 1])
        self.pending += len(infos)
        if self.pending >= self.every:
            self.pending = 0
            self._update(infos[-1].index)

    def _update(self, frame: int) -> None:
        start_s = time.perf_counter()
        result = update(self.state, torch.cat(list(self.recent)).float(), self.drift)
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - start_s
        if result.reset:
            event = {"frame": frame, "update": self.state.updates, "reason": result.reset}
            self.events.append(event)
            self.log(f"adapt: reset #{self.state.resets} to the anchor at frame {frame} "
                     f"(update {self.state.updates}): {result.reset}")

    def summary(self, frames: int, wall_s: float) -> dict[str, Any]:
        """What ``summary.json`` reports under ``adaptation``; ``wall_s``: the run's wall time."""
        s = self.state
        without = wall_s - self.seconds
        return {"method": s.method.name, "every": self.every, "options": dataclasses.asdict(s.cfg),
                "reset_enabled": self.drift is not None, "updates": s.updates, "resets": s.resets,
                "reset_events": list(self.events), "adapt_s": round(self.seconds, 3),
                "ms_per_update": round(1000 * self.seconds / s.updates, 3) if s.updates else 0.0,
                "fps_with_adaptation": round(frames / wall_s, 3) if wall_s > 0 else 0.0,
                "fps_without_adaptation_est": round(frames / without, 3) if without > 0 else 0.0}
