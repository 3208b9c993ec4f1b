"""The built-in synthetic domain-shift benchmark, written in the Cityscapes layout (one per style).

``generate(root, styles, splits, size, seed)`` renders each scene once (``synth_scene``) and paints it
in every style (``synth_styles``), so all styles share their labels exactly. Layout per style::

    root/<style>/leftImg8bit/<split>/synth/synth_<nnnnnn>_000019_leftImg8bit.png   (RGB)
    root/<style>/gtFine/<split>/synth/synth_<nnnnnn>_000019_gtFine_labelIds.png    (Cityscapes labelIds)

Read one back with ``build_dataset("cityscapes", root/<style>, split)``. Everything is a function of
``seed`` (scene ``i`` of split ``s`` uses ``default_rng([seed, s, i])``), so the same call writes the
same bytes. ``root/synthetic.json`` records the parameters; it is written last, and a root whose
manifest matches the request is reused as it is.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from sfda_deploy.classes import suggest
from sfda_deploy.data.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX
from sfda_deploy.data.synth_scene import render_scene
from sfda_deploy.data.synth_styles import STYLES, render_style, scene_knobs
from sfda_deploy.errors import SfdaError
from sfda_deploy.progress import progress as bar
from sfda_deploy.runs import write_bytes, write_json

MANIFEST = "synthetic.json"
SPLITS = ("train", "val", "test")
MIN_SIZE = (32, 64)


def parse_styles(styles: str | Sequence[str]) -> tuple[str, ...]:
    """``"source,fog"`` or a sequence → validated style names (one-line error naming the valid ones)."""
    names = [s.strip() for s in (styles.split(",") if isinstance(styles, str) else styles) if s.strip()]
    if not names:
        raise SfdaError(f"no style given: pass --styles with some of {','.join(STYLES)}")
    for s in names:
        if s not in STYLES:
            raise SfdaError(f"unknown style '{s}'{suggest(s, STYLES)}: choose from {','.join(STYLES)}")
    return tuple(dict.fromkeys(names))


def check_request(splits: Mapping[str, int], size: Sequence[int]) -> tuple[dict[str, int], tuple[int, int]]:
    """Validate split counts and image size; returns them normalised."""
    for split, n in splits.items():
        if split not in SPLITS:
            raise SfdaError(f"unknown split '{split}': use {', '.join(SPLITS)}")
        if int(n) < 0:
            raise SfdaError(f"--{split} is {n}: pass a number of images >= 0")
    if sum(int(n) for n in splits.values()) == 0:
        raise SfdaError("nothing to generate (all image counts are 0): pass --train/--val > 0")
    if len(size) != 2 or size[0] < MIN_SIZE[0] or size[1] < MIN_SIZE[1]:
        raise SfdaError(f"--size {' '.join(map(str, size))} is too small: use at least {MIN_SIZE[0]} {MIN_SIZE[1]} (H W)")
    return {k: int(v) for k, v in splits.items()}, (int(size[0]), int(size[1]))


def stem(index: int) -> str:
    """Cityscapes-style stem ``<city>_<sequence>_<frame>`` of image ``index``."""
    return f"synth_{index:06d}_000019"


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok  # uint8 arrays always encode
    return buf.tobytes()


def render_sample(seed: int, split: str, index: int, size: tuple[int, int],
                  styles: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scene ``index`` in each style → {style: (labelIds ``[H,W]`` uint8, RGB ``[H,W,3]`` uint8)}. Pure function of
    its args, and each style's output of its own name (not of the other ``styles`` asked for). The styles drawn
    with the source's street and camera share one scene (and so their labels); a structured style draws its own
    with its layout and camera (``synth_styles.scene_knobs``), seeded by the first style of the registry with
    those knobs, so structured styles that share them share their scenes too."""
    split_id = SPLITS.index(split)
    scenes: dict = {}
    out = {}
    for s in styles:
        knobs = scene_knobs(s)
        if knobs not in scenes:
            owner = next(t for t in STYLES if scene_knobs(t) == knobs)
            key = [seed, split_id, index] if knobs == scene_knobs("source") else \
                [seed, split_id, index, 1 + STYLES.index(owner), 0]
            scenes[knobs] = render_scene(np.random.default_rng(key), *size, *knobs)
        scene = scenes[knobs]
        out[s] = (scene["label"], render_style(scene, s, np.random.default_rng([seed, split_id, index,
                                                                                 1 + STYLES.index(s)])))
    return out


# The modules whose code decides every pixel and label, with ``render_sample`` (the seeding): their hash is the
# renderer's identity (benchmark v3 is frozen on it: docs/benchmark_steps/freeze.json).
RENDERER_MODULES = ("synth_geometry", "synth_scene", "synth_actors", "synth_shifts", "synth_camera", "synth_styles")
VERSION = 5  # 5: benchmark v3 (structured styles; the appearance and stress styles as in 4, bit for bit)


def renderer_sha256() -> str:
    """SHA-256 of the renderer's source files (``RENDERER_MODULES``, in that order) and of ``render_sample``."""
    import hashlib
    import inspect

    h = hashlib.sha256()
    for name in RENDERER_MODULES:
        h.update((Path(__file__).parent / f"{name}.py").read_bytes())
    h.update(inspect.getsource(render_sample).encode())
    return h.hexdigest()


def _manifest(styles, splits, size, seed) -> dict:
    return {"generator": "sfda_deploy.data.synthetic", "version": VERSION, "renderer_sha256": renderer_sha256(),
            "styles": list(styles), "splits": dict(splits), "size": list(size), "seed": int(seed)}


def _check_root(root: Path, manifest: dict) -> bool:
    """True when ``root`` already holds exactly this benchmark; error when it holds something else."""
    path = root / MANIFEST
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            found = None
        if found == manifest:
            return True
        raise SfdaError(f"{root} already holds a synthetic benchmark made with other settings ({path}): "
                        "choose a new output directory or delete it")
    clash = [s for s in manifest["styles"] if (root / s).exists()]
    if clash:
        raise SfdaError(f"{root / clash[0]} already exists (an unfinished or foreign dataset): "
                        "choose a new output directory or delete it")
    return False


def generate(root: str | Path, styles: Sequence[str] = STYLES, splits: Mapping[str, int] | None = None,
             size: Sequence[int] = (256, 512), seed: int = 0, progress: bool = True) -> Path:
    """Write the benchmark under ``root`` (see the module docstring) and return ``root``.

    Args:
        root: output folder; gets one Cityscapes-layout dataset per style plus ``synthetic.json``.
        styles: names from ``STYLES`` (or a comma-separated string).
        splits: images per split, e.g. ``{"train": 300, "val": 100}`` (default: that).
        size: ``(H, W)`` of every image.
        seed: everything is a function of it.
        progress: show a tqdm bar (one step per scene, all styles).
    """
    root = Path(root)
    styles = parse_styles(styles)
    splits, size = check_request(splits if splits is not None else {"train": 300, "val": 100}, size)
    manifest = _manifest(styles, splits, size, seed)
    if _check_root(root, manifest):
        return root
    jobs = [(split, i) for split, n in splits.items() for i in range(n)]
    for split, i in bar(jobs, desc="generate", unit="scene", disable=not progress):
        name = stem(i)
        for style, (label, rgb) in render_sample(seed, split, i, size, styles).items():
            write_bytes(root / style / "leftImg8bit" / split / "synth" / f"{name}{IMAGE_SUFFIX}",
                        _png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
            write_bytes(root / style / "gtFine" / split / "synth" / f"{name}{LABEL_SUFFIX}", _png(label))
    write_json(root / MANIFEST, manifest)
    return root
