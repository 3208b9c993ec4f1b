"""Appearance of the synthetic benchmark: one scene (``synth_scene.render_scene``) → an RGB image per style.

A style sees only the scene's material, tint and depth maps (never its labels), so all styles of one
scene share their label map exactly and differ in appearance alone:

- ``source``: the real palette more saturated and brighter, clean coarse texture, no noise, even light
  (a "game engine" look);
- calibrated targets, seen through ``CALIBRATED_LOOK`` (so that a source model keeps about half of its
  oracle's mIoU, as GTA5/SYNTHIA → Cityscapes do): ``real`` (another palette, textures, cast shadows,
  white balance / exposure, distance haze, sensor noise, blur, vignetting), ``fog`` (``real`` through
  depth-dependent fog, Koschmieder ``I·t + A·(1-t)``, ``t = e^{-βz}``, visibility 250–600 m), ``night`` (a lit
  street: ambient light, lamps, headlights, lit windows with glow, noise) and ``rain`` (dim overcast light, a
  wet road mirroring what stands on it, streaks, spray);
- stress styles, seen through the harsher first camera (``synth_camera.HARSH``): ``fog-dense`` (visibility
  60–150 m) and ``night-dark`` (dim ambient, black sky, strong noise), where a source model is confidently
  wrong.

All maths is vectorised numpy/cv2 on ``[H,W]`` / ``[H,W,3]`` float32 images in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sfda_deploy.data import synth_geometry as S
from sfda_deploy.data.synth_camera import (COARSE, EMIT, EMIT_RGB, FINE, GROUND, HARSH, SOURCE_PALETTE, TINT_SOURCE,
                                           Look, albedo, camera, look_albedo, real_linear, sensor, smooth_noise,
                                           to_uint8, vignette)
from sfda_deploy.data.synth_shifts import (ARTERIAL, AUTUMN, AVENUE, CONCRETE_SUBURB, HIGH_NARROW, LOW_WIDE,
                                           NO_MATERIALS, OLD_TOWN, SOURCE_LAYOUT, SOURCE_RIG, SUBURB, WORN_CONCRETE_SUBURB, Layout,
                                           Materials, Rig)

# Target styles calibrated so that a source model keeps about half its oracle's mIoU (as GTA5/SYNTHIA →
# Cityscapes do), then the stress styles (the first, harsh fog and night). New styles go at the end: a
# style's random stream is seeded by its index here.
STYLES = ("source", "real", "fog", "night", "rain", "fog-dense", "night-dark", "city2", "suburb", "autumn-rain",
          "night-city", "newtown", "newtown-worn")
CALIBRATED = ("real", "fog", "night", "rain")
STRESS = ("fog-dense", "night-dark")
STRUCTURED = ("city2", "suburb", "autumn-rain", "night-city", "newtown", "newtown-worn")
# The family of each style: the appearance styles (v2: global changes of look, which BatchNorm statistics
# absorb), the stress styles, and the structured ones (v3: materials, camera, layout, local light).
FAMILY = {"source": "source", **{s: "appearance" for s in CALIBRATED}, **{s: "stress" for s in STRESS},
          **{s: "structured" for s in STRUCTURED}}


# ---- styles -----------------------------------------------------------------------------------
def source(scene: dict, rng: np.random.Generator) -> np.ndarray:
    """Saturated bright colours with clean coarse texture, a slight global brightness jitter; no noise."""
    mat = scene["material"]
    H, W = mat.shape
    img = albedo(scene, SOURCE_PALETTE, TINT_SOURCE) * rng.uniform(0.9, 1.1)
    # Clean, coarse texture at half the real amplitude (game assets are textured, just not noisy).
    coarse = smooth_noise(rng, H, W, cell=max(4.0, W / 40))
    return to_uint8(img * np.clip(1 + 0.5 * COARSE[mat] * coarse, 0.5, 1.5)[..., None])


# The calibrated camera (source-only keeps about half of the oracle's mIoU; docs/benchmark.md): 60 % of
# the way to the real palette, lighter texture, shadows, white balance and exposure swings than HARSH.
# Tuned on the bundled source model's source-only mIoU (40 val scenes per candidate), never on a method's result.
CALIBRATED_LOOK = Look(palette=0.6, texture=0.7, shadow=(0.15, 0.35), white_balance=0.08, exposure=(0.85, 1.15))


def real(scene: dict, rng: np.random.Generator, look: Look = CALIBRATED_LOOK) -> np.ndarray:
    """A different camera: textures, shadows, another palette and white balance, noise, blur, vignetting."""
    return camera(real_linear(scene, rng, look), rng, look)


def _fogged(scene: dict, rng: np.random.Generator, visibility: tuple[float, float], look: Look) -> np.ndarray:
    """``real`` through homogeneous fog whose visibility (t = 5 %) is drawn from ``visibility`` metres."""
    img = real_linear(scene, rng, look)
    H, W = img.shape[:2]
    beta = 3.0 / rng.uniform(*visibility)
    t = np.exp(-beta * scene["depth"])[..., None]
    airlight = np.float32([0.78, 0.80, 0.82]) * rng.uniform(0.85, 1.05)
    img = img * t + airlight * (1 - t)
    img = sensor(img * vignette(H, W, 0.3), rng, blur=1.0 * W / 512 + 0.4, read=0.015, shot=0.02)
    return to_uint8(img)


def fog(scene: dict, rng: np.random.Generator, look: Look = CALIBRATED_LOOK) -> np.ndarray:
    """Light to moderate fog (visibility 250–600 m: Foggy Cityscapes uses 150, 300 and 600 m)."""
    return _fogged(scene, rng, visibility=(250, 600), look=look)


def fog_dense(scene: dict, rng: np.random.Generator) -> np.ndarray:
    """Stress style: dense fog (visibility 60–150 m), the benchmark's first fog."""
    return _fogged(scene, rng, visibility=(60, 150), look=HARSH)


def _night(scene: dict, rng: np.random.Generator, ambient: tuple[float, float], sky_rgb: tuple[float, float, float],
           read: float, shot: float, gamma: float, look: Look, materials: Materials = NO_MATERIALS) -> np.ndarray:
    """Ambient light, ego headlights, street lamps and lit windows that glow, then sensor noise."""
    mat, tint, depth = scene["material"], scene["tint"], scene["depth"]
    H, W = mat.shape
    albedo = look_albedo(scene, look, materials)
    albedo = albedo * np.clip(1 + FINE[mat][..., None] * 0.5 * smooth_noise(rng, H, W, 2.0)[..., None], 0.5, 1.5)
    # Emitters: lamps, vehicle lights and traffic lights always; windows where their tint says "lit".
    lit = tint % 3 == 0
    emit = np.where(mat == S.M_WINDOW, EMIT[mat] * lit, EMIT[mat]).astype(np.float32)
    emit_rgb = EMIT_RGB[mat] * emit[..., None]
    # Light on surfaces: ambient, pools under lamps (wide blur of the emitters), ego headlights on near things.
    pools = cv2.GaussianBlur(emit_rgb, (0, 0), W / 14) * rng.uniform(3.0, 6.0)
    xs = (np.arange(W, dtype=np.float32) - W / 2) / (0.45 * W)
    beam = np.exp(-depth / rng.uniform(10, 20)) * np.exp(-xs**2)[None, :] * rng.uniform(0.8, 1.4)
    img = albedo * (rng.uniform(*ambient) + pools + beam[..., None])
    sky = (mat == S.M_SKY) | (mat == S.M_CLOUD)
    img[sky] = np.float32(sky_rgb) * rng.uniform(0.7, 1.5)
    # Emitters and their glow (halo) on top.
    glow = cv2.GaussianBlur(emit_rgb, (0, 0), max(1.0, W / 120)) * 1.5
    img = img + emit_rgb + glow
    img = sensor(img, rng, blur=0.5 * W / 512 + 0.3, read=read, shot=shot)
    return to_uint8(img, gamma=gamma)


def night(scene: dict, rng: np.random.Generator, look: Look = CALIBRATED_LOOK) -> np.ndarray:
    """A lit city street at night: bright ambient (street lighting), a dark-blue sky, moderate noise."""
    return _night(scene, rng, ambient=(0.45, 0.7), sky_rgb=(0.18, 0.22, 0.32), read=0.015, shot=0.02, gamma=1.25,
                  look=look)


def night_dark(scene: dict, rng: np.random.Generator) -> np.ndarray:
    """Stress style: dim ambient light, a black sky and strong noise, the benchmark's first night."""
    return _night(scene, rng, ambient=(0.04, 0.1), sky_rgb=(0.02, 0.025, 0.05), read=0.03, shot=0.05, gamma=1.6,
                  look=HARSH)


def _streaks(rng: np.random.Generator, H: int, W: int, density: float, length: float) -> np.ndarray:
    """Rain streaks ``[H,W]`` in [0, 1]: sparse drops smeared along one slanted direction."""
    drops = (rng.random((H, W)) < density).astype(np.float32) * rng.uniform(0.5, 1.0, (H, W)).astype(np.float32)
    n = max(3, int(length) | 1)
    kernel = np.zeros((n, n), np.float32)
    tilt = rng.uniform(-0.25, 0.25)
    for i in range(n):
        kernel[i, int(round((n - 1) / 2 + tilt * (i - (n - 1) / 2)))] = 1.0
    return np.clip(cv2.filter2D(drops, -1, kernel / n) * n * 0.5, 0, 1)


def _rain(scene: dict, rng: np.random.Generator, look: Look, dim: tuple[float, float], wet: tuple[float, float],
          streaks: float, veil: tuple[float, float], materials: Materials = NO_MATERIALS) -> np.ndarray:
    """Overcast light dimmed by ``dim``, a wet ground mirroring what stands on it (``wet``), rain streaks of
    brightness ``streaks`` and a veil of spray (``veil``)."""
    mat = scene["material"]
    H, W = mat.shape
    img = real_linear(scene, rng, look, materials) * rng.uniform(*dim)
    # Wet ground: darker, with a vertically smeared copy of the image above it (reflections of cars, poles, lamps).
    ground = GROUND[mat][..., None]
    smear = cv2.blur(np.ascontiguousarray(img[::-1]), (max(1, W // 128), max(3, H // 10)))[::-1]
    img = img * (1 - 0.35 * ground) + ground * rng.uniform(*wet) * smear
    img = img + streaks * (1 + 0.6 * rng.random()) * _streaks(rng, H, W, 0.004, H / 12)[..., None]
    haze = np.float32([0.6, 0.62, 0.65]) * rng.uniform(*veil)
    img = sensor(img * (1 - haze.mean()) + haze, rng, blur=0.9 * W / 512 + 0.4, read=0.02, shot=0.025)
    return to_uint8(img)


def rain(scene: dict, rng: np.random.Generator, look: Look = CALIBRATED_LOOK) -> np.ndarray:
    """Overcast rain: dimmer flat light, a wet road that mirrors what stands on it, streaks, a veil of spray."""
    return _rain(scene, rng, look, dim=(0.8, 0.95), wet=(0.15, 0.3), streaks=0.12, veil=(0.04, 0.1))


RENDERERS = {"source": source, "real": real, "fog": fog, "night": night, "rain": rain,
             "fog-dense": fog_dense, "night-dark": night_dark}


# ---- structured styles (benchmark v3) ---------------------------------------------------------------------------
def _day(scene: dict, rng: np.random.Generator, look: Look, materials: Materials) -> np.ndarray:
    return camera(real_linear(scene, rng, look, materials), rng, look)


def _wet(scene: dict, rng: np.random.Generator, look: Look, materials: Materials) -> np.ndarray:
    """Local rain: a wet road mirroring what stands above it, streaks and spray (``rain``'s light)."""
    return _rain(scene, rng, look, dim=(0.8, 0.95), wet=(0.15, 0.3), streaks=0.12, veil=(0.04, 0.1),
                 materials=materials)


def _lit_night(scene: dict, rng: np.random.Generator, look: Look, materials: Materials) -> np.ndarray:
    """Local light at night: pools under the lamps, headlights, lit windows (``night``'s light)."""
    return _night(scene, rng, ambient=(0.45, 0.7), sky_rgb=(0.18, 0.22, 0.32), read=0.015, shot=0.02, gamma=1.25,
                  look=look, materials=materials)


LIGHTS = {"day": _day, "rain": _wet, "night": _lit_night}


@dataclass(frozen=True)
class Structured:
    """A structured target style: one knob of each family (``synth_shifts``) and a light.

    Attributes:
        layout: what the street holds (the scene is drawn anew with it).
        rig: the camera (field of view, mount, pitch, lens distortion).
        materials: class-conditional appearance.
        light: ``day``, ``rain`` (wet reflections) or ``night`` (lamp pools, headlights).
        look: the global camera look (palette, texture, light, white balance) on top.
    """
    layout: Layout = SOURCE_LAYOUT
    rig: Rig = SOURCE_RIG
    materials: Materials = NO_MATERIALS
    light: str = "day"
    look: Look = CALIBRATED_LOOK


# A camera nearer the game's look than CALIBRATED_LOOK: where the materials carry the shift, the global part
# stays small (tuned on source-only and AdaBN numbers only, like every knob of these styles).
MILD_LOOK = Look(palette=0.3, texture=0.5, shadow=(0.1, 0.25), white_balance=0.05, exposure=(0.9, 1.1))
# Lighter still (city2, whose cobbles, facades and camera carry its shift).
LIGHT_LOOK = Look(palette=0.15, texture=0.4, shadow=(0.05, 0.15), white_balance=0.03, exposure=(0.95, 1.05))

STRUCTURED_SPECS = {
    "city2": Structured(rig=LOW_WIDE, materials=OLD_TOWN, look=LIGHT_LOOK),
    "suburb": Structured(layout=SUBURB, materials=AUTUMN, look=MILD_LOOK),
    "autumn-rain": Structured(layout=AVENUE, materials=AUTUMN, light="rain"),
    "night-city": Structured(layout=ARTERIAL, rig=HIGH_NARROW, light="night"),
    "newtown": Structured(rig=HIGH_NARROW, materials=CONCRETE_SUBURB, look=MILD_LOOK),
    "newtown-worn": Structured(rig=HIGH_NARROW, materials=WORN_CONCRETE_SUBURB, look=MILD_LOOK),
}


def scene_knobs(style: str) -> tuple[Layout, Rig]:
    """The layout and camera a style's scenes are drawn with (the source's for every non-structured style)."""
    spec = STRUCTURED_SPECS.get(style)
    return (spec.layout, spec.rig) if spec else (SOURCE_LAYOUT, SOURCE_RIG)


def render_style(scene: dict, style: str, rng: np.random.Generator) -> np.ndarray:
    """The scene's image in ``style``: uint8 ``[H,W,3]`` RGB. A structured style's scene must have been drawn
    with its ``scene_knobs``."""
    spec = STRUCTURED_SPECS.get(style)
    if spec is not None:
        return LIGHTS[spec.light](scene, rng, spec.look, spec.materials)
    return RENDERERS[style](scene, rng)
