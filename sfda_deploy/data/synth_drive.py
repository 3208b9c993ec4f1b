"""A labelled synthetic drive: one continuous video through changing conditions, repeated for R rounds.

The camera drives down the street of a scene (``synth_scene``, seen from ``Camera.ego`` metres further
along at every frame): ``scene_frames`` frames per street, then the next street. The conditions are
styles of ``synth_styles`` looked up by name (``--conditions real,fog,night,real``), each held for
``condition_frames`` frames while the street goes on; a round is the whole sequence and every round
drives the same streets again (CoTTA's protocol: the same conditions repeated), so round 1 and the
last round can be compared frame for frame. Traffic in the lanes drives at the ego's speed, parked
cars and oncoming traffic stand, nobody walks on the road.

A style's random draws (exposure, fog density, noise) are seeded per street and condition, not per
frame: the look holds steady along a street instead of flickering. Layout::

    OUT/drive.mp4                      the video (mp4v, ``fps``)
    OUT/labels/frame_<nnnnnn>.png      Cityscapes labelIds, one per video frame
    OUT/labels/conditions.csv          frame,round,condition
    OUT/drive.json                     the parameters

Everything is written under a temporary sibling folder renamed to ``OUT`` at the end (nothing
half-written); the same parameters write the same labels.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from sfda_deploy.classes import suggest
from sfda_deploy.data.synth_scene import Scene
from sfda_deploy.data.synth_styles import STYLES, render_style
from sfda_deploy.errors import SfdaError
from sfda_deploy.progress import progress as bar
from sfda_deploy.runs import write_bytes, write_json, write_text

CONDITIONS_FILE = "conditions.csv"
MIN_SIZE = (32, 64)


@dataclass(frozen=True)
class DrivePlan:
    """What a drive holds. ``speed``: metres per frame; ``fps``: of the video."""

    conditions: tuple[str, ...]
    rounds: int = 3
    condition_frames: int = 50
    scene_frames: int = 40
    size: tuple[int, int] = (256, 512)
    seed: int = 0
    speed: float = 0.5
    fps: float = 10.0

    @property
    def frames_per_round(self) -> int:
        return len(self.conditions) * self.condition_frames

    @property
    def frames(self) -> int:
        return self.rounds * self.frames_per_round

    def frame(self, i: int) -> tuple[int, str, int, float]:
        """Frame ``i`` of the video → (round 1.., condition, street index, metres driven on that street)."""
        k = i % self.frames_per_round
        return (i // self.frames_per_round + 1, self.conditions[k // self.condition_frames],
                k // self.scene_frames, (k % self.scene_frames) * self.speed)


def parse_conditions(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"real,fog,night,real"`` → names of known styles, in order (repeats allowed)."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise SfdaError(f"no condition given: pass --conditions with some of {','.join(STYLES)}")
    for name in names:
        if name not in STYLES:
            raise SfdaError(f"unknown condition '{name}'{suggest(name, STYLES)}: choose from {','.join(STYLES)}")
    return tuple(names)


def check_plan(plan: DrivePlan) -> DrivePlan:
    for flag, value in (("--rounds", plan.rounds), ("--condition-frames", plan.condition_frames),
                        ("--scene-frames", plan.scene_frames)):
        if value < 1:
            raise SfdaError(f"{flag} must be >= 1, got {value}")
    if len(plan.size) != 2 or plan.size[0] < MIN_SIZE[0] or plan.size[1] < MIN_SIZE[1]:
        raise SfdaError(f"--size {' '.join(map(str, plan.size))} is too small: use at least {MIN_SIZE[0]} {MIN_SIZE[1]} (H W)")
    return plan


class DriveScene(Scene):
    """``Scene`` seen after driving ``ego`` metres down its road (same random draws as at ``ego = 0``)."""

    def __init__(self, rng: np.random.Generator, H: int, W: int, ego: float):
        super().__init__(rng, H, W)
        self.ego = self.cam.ego = self.cv.ego = ego

    def add_vehicle(self, kind, X, Z, oncoming):
        parked = abs(abs(X) - (self.rw / 2 - 1.0)) < 1e-9  # Actors.vehicles parks cars at ±(rw/2 − 1)
        super().add_vehicle(kind, X, Z if oncoming or parked else Z + self.ego, oncoming)

    def add_cycle(self, X, Z, moto, ridden):
        super().add_cycle(X, Z + self.ego if ridden else Z, moto, ridden)

    def add_person(self, X, Z):
        before = len(self.objects)
        super().add_person(X, Z)  # always called: the random draws stay those of the still scene
        if abs(X) < self.rw / 2:
            del self.objects[before:]


def _style_seed(name: str) -> int:
    return zlib.crc32(name.encode())  # stable across renamings/reorderings of the style registry


def render_frame(plan: DrivePlan, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``i`` → (RGB uint8 ``[H,W,3]``, labelIds uint8 ``[H,W]``). A pure function of ``plan`` and ``i``."""
    _, condition, street, ego = plan.frame(i)
    cv = DriveScene(np.random.default_rng([plan.seed, 7, street]), *plan.size, ego).render()
    scene = {"label": cv.lmt[..., 0], "material": cv.lmt[..., 1], "tint": cv.lmt[..., 2], "depth": cv.depth}
    rgb = render_style(scene, condition, np.random.default_rng([plan.seed, 7, street, _style_seed(condition)]))
    return rgb, scene["label"].copy()


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise SfdaError("cannot encode a PNG (out of memory?): retry with a smaller --size")
    return buf.tobytes()


def _conditions_csv(plan: DrivePlan) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["frame", "round", "condition"])
    for i in range(plan.frames):
        rnd, condition, _, _ = plan.frame(i)
        writer.writerow([f"frame_{i:06d}", rnd, condition])
    return out.getvalue()


def _write(plan: DrivePlan, tmp: Path, progress: bool) -> None:
    h, w = plan.size
    video = cv2.VideoWriter(str(tmp / "drive.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), plan.fps, (w, h))
    if not video.isOpened():
        raise SfdaError(f"cannot write an mp4v video under {tmp.parent}: check the folder is writable")
    try:
        for i in bar(range(plan.frames), desc="drive", unit="frame", disable=not progress):
            rgb, label = render_frame(plan, i)
            video.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            write_bytes(tmp / "labels" / f"frame_{i:06d}.png", _png(label))
    finally:
        video.release()
    write_text(tmp / "labels" / CONDITIONS_FILE, _conditions_csv(plan))
    write_json(tmp / "drive.json", {"generator": "sfda_deploy.data.synth_drive", "version": 1, **asdict(plan),
                                    "frames": plan.frames, "frames_per_round": plan.frames_per_round})


def generate_drive(out: str | Path, plan: DrivePlan, progress: bool = True) -> Path:
    """Write the drive of ``plan`` to the new folder ``out`` (see the module docstring)."""
    out = Path(out)
    check_plan(plan)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SfdaError(f"--drive {out} already exists and is not empty: choose a new folder")
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        (tmp / "labels").mkdir(parents=True, exist_ok=True)
        _write(plan, tmp, progress)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except OSError as e:
        raise SfdaError(f"cannot write the drive under {out.parent} ({e.strerror}): choose a writable folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
