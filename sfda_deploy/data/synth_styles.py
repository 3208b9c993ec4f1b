"""Appearance of the synthetic benchmark: one scene (``synth_scene.render_scene``) → an RGB image per style.

A style sees only the scene's material, tint and depth maps (never its labels), so all styles of one
scene share their label map exactly and differ in appearance alone:

- ``source``: the real palette more saturated and brighter, clean coarse texture, no noise, even light
  (a "game engine" look);
- ``real``: another palette (desaturated, darker vegetation, grey asphalt), textures, cast shadows,
  per-image white balance / exposure, distance haze, sensor noise, slight blur and vignetting;
- ``fog``: ``real`` seen through depth-dependent fog (Koschmieder: ``I·t + A·(1-t)``, ``t = e^{-βz}``);
- ``night``: ``real`` albedo under dim ambient light, street lamps, ego headlights and lit windows
  with glow, and strong sensor noise.

All maths is vectorised numpy/cv2 on ``[H,W]`` / ``[H,W,3]`` float32 images in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sfda_deploy.data import synth_geometry as S

# Target styles calibrated so that a source model keeps about half its oracle's mIoU (as GTA5/SYNTHIA →
# Cityscapes do), then the stress styles (the first, harsh fog and night). New styles go at the end: a
# style's random stream is seeded by its index here.
STYLES = ("source", "real", "fog", "night", "rain", "fog-dense", "night-dark")
CALIBRATED = ("real", "fog", "night", "rain")
STRESS = ("fog-dense", "night-dark")
_NM = S.NUM_MATERIALS


def _table(colours: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """``[NUM_MATERIALS, 3]`` float32 RGB in [0, 1] from ``{material: (r, g, b)}``."""
    out = np.zeros((_NM, 3), np.float32)
    for mat, rgb in colours.items():
        out[mat] = np.asarray(rgb, np.float32) / 255.0
    return out


def _per_material(values: dict[int, float], default: float = 0.0) -> np.ndarray:
    out = np.full(_NM, default, np.float32)
    for mat, v in values.items():
        out[mat] = v
    return out


# Base colour of each material.
_REAL = _table({
    S.M_SKY: (185, 198, 210), S.M_CLOUD: (225, 225, 228), S.M_ROAD: (78, 78, 82), S.M_MARK: (200, 200, 190),
    S.M_SIDEWALK: (140, 132, 125), S.M_BUILDING: (120, 112, 104), S.M_WINDOW: (50, 58, 66),
    S.M_WALL: (150, 140, 125), S.M_FENCE: (110, 100, 85), S.M_POLE: (95, 98, 100), S.M_LAMP: (180, 180, 170),
    S.M_LIGHT_BOX: (30, 32, 30), S.M_RED: (200, 40, 30), S.M_GREEN: (40, 200, 120), S.M_SIGN: (60, 90, 170),
    S.M_VEG: (62, 82, 40), S.M_TRUNK: (70, 55, 42), S.M_TERRAIN: (120, 125, 70), S.M_SKIN: (190, 150, 125),
    S.M_CLOTHES: (60, 60, 70), S.M_CAR: (140, 140, 145), S.M_GLASS: (40, 48, 55), S.M_TYRE: (30, 30, 30),
    S.M_TAIL: (190, 30, 25), S.M_HEAD: (235, 235, 220), S.M_TRUCK: (190, 185, 175), S.M_BUS: (170, 60, 50),
    S.M_BIKE: (50, 50, 55), S.M_MOTO: (40, 40, 45)})


def _game_look(rgb: np.ndarray, saturation: float, value: float) -> np.ndarray:
    """``rgb`` ``[N,3]`` in [0, 1] with saturation and brightness scaled (HSV), clipped to [0, 1]."""
    hsv = cv2.cvtColor(rgb[None].astype(np.float32), cv2.COLOR_RGB2HSV)[0]
    hsv[:, 1] = np.clip(hsv[:, 1] * saturation, 0, 1)
    hsv[:, 2] = np.clip(hsv[:, 2] * value, 0, 1)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


# The source ("game engine") palette is the real one, more saturated and brighter, with a vivid sky and
# greener vegetation: the shift to ``real`` is one of look (texture, light, sensor), not a permutation of
# colours, as between GTA5 and Cityscapes, so a source model keeps something for adaptation to build on.
_SOURCE = _game_look(_REAL, saturation=1.8, value=1.3)
_SOURCE[S.M_SKY] = np.float32([140, 185, 240]) / 255
_SOURCE[S.M_VEG] = np.float32([70, 130, 40]) / 255
# How far a material leans towards its instance's random colour (cars come in all colours, roads do not).
_MIX = _per_material({S.M_CAR: 0.8, S.M_TRUCK: 0.6, S.M_BUS: 0.5, S.M_CLOTHES: 0.85, S.M_BIKE: 0.7, S.M_MOTO: 0.7,
                      S.M_BUILDING: 0.35, S.M_WALL: 0.3, S.M_FENCE: 0.2, S.M_SIGN: 0.25, S.M_SKIN: 0.2,
                      S.M_CLOUD: 0.05}, 0.08)
# Texture amplitude of the real styles: fine grain and coarse blotches (relative luminance change).
_FINE = _per_material({S.M_ROAD: 0.10, S.M_SIDEWALK: 0.12, S.M_BUILDING: 0.10, S.M_WALL: 0.12, S.M_VEG: 0.35,
                       S.M_TERRAIN: 0.25, S.M_TRUNK: 0.2, S.M_FENCE: 0.2, S.M_CLOTHES: 0.08}, 0.03)
_COARSE = _per_material({S.M_ROAD: 0.12, S.M_SIDEWALK: 0.12, S.M_BUILDING: 0.15, S.M_WALL: 0.15, S.M_VEG: 0.25,
                         S.M_TERRAIN: 0.25, S.M_SKY: 0.06, S.M_CLOUD: 0.1}, 0.04)
# Materials that emit light at night, with their glow strength.
_EMIT = _per_material({S.M_LAMP: 3.0, S.M_HEAD: 3.0, S.M_TAIL: 1.5, S.M_RED: 1.5, S.M_GREEN: 1.5, S.M_WINDOW: 0.9})
_EMIT_RGB = _table({S.M_LAMP: (255, 210, 140), S.M_HEAD: (255, 250, 230), S.M_TAIL: (255, 30, 20),
                    S.M_RED: (255, 40, 30), S.M_GREEN: (60, 255, 150), S.M_WINDOW: (255, 200, 120)})
_GROUND = np.zeros(_NM, bool)
_GROUND[[S.M_ROAD, S.M_MARK, S.M_SIDEWALK, S.M_TERRAIN]] = True

# Instance colour of each tint value: fixed tables (not seed-dependent), saturated for source, muted for real.
_TINT_RGB = np.random.default_rng(12345).uniform(0, 1, (256, 3)).astype(np.float32)
_TINT_REAL = (0.25 + 0.45 * (0.5 * _TINT_RGB + 0.5 * _TINT_RGB.mean(1, keepdims=True))) ** 1.2  # desaturated, darker
_TINT_SOURCE = _game_look(_TINT_REAL, saturation=1.8, value=1.3)


def _albedo(scene: dict, base: np.ndarray, tints: np.ndarray) -> np.ndarray:
    """Per-pixel colour ``[H,W,3]``: the material's base colour mixed with the instance's tint colour."""
    mat, tint = scene["material"], scene["tint"]
    mix = _MIX[mat][..., None]
    return base[mat] * (1 - mix) + tints[tint] * mix


def _noise(rng: np.random.Generator, H: int, W: int, cell: float) -> np.ndarray:
    """Smooth zero-mean unit-ish noise ``[H,W]`` with features about ``cell`` pixels large."""
    h, w = max(2, int(H / cell) + 2), max(2, int(W / cell) + 2)
    small = rng.standard_normal((h, w)).astype(np.float32)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)


def _vignette(H: int, W: int, strength: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
    return (1 - strength * r2 / 2)[..., None]


def _sensor(img: np.ndarray, rng: np.random.Generator, blur: float, read: float, shot: float) -> np.ndarray:
    """Optical blur, then photon (signal-dependent) and read noise."""
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    sigma = np.sqrt(read**2 + shot**2 * np.clip(img, 0, None))
    return img + sigma * rng.standard_normal(img.shape).astype(np.float32)


def _to_uint8(img: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    img = np.clip(img, 0, 1)
    if gamma != 1.0:
        img = img ** (1 / gamma)
    return (img * 255 + 0.5).astype(np.uint8)


# ---- styles -----------------------------------------------------------------------------------
def source(scene: dict, rng: np.random.Generator) -> np.ndarray:
    """Saturated bright colours with clean coarse texture, a slight global brightness jitter; no noise."""
    mat = scene["material"]
    H, W = mat.shape
    img = _albedo(scene, _SOURCE, _TINT_SOURCE) * rng.uniform(0.9, 1.1)
    # Clean, coarse texture at half the real amplitude (game assets are textured, just not noisy).
    coarse = _noise(rng, H, W, cell=max(4.0, W / 40))
    return _to_uint8(img * np.clip(1 + 0.5 * _COARSE[mat] * coarse, 0.5, 1.5)[..., None])


@dataclass(frozen=True)
class Look:
    """How far a real camera's image is from the game look: the knobs the calibration turns.

    Attributes:
        palette: 0 = the source palette, 1 = the real one (colours interpolated between the two).
        texture: scale of the fine grain and coarse blotches of the real textures.
        shadow: depth of cast shadows on the ground (drawn uniformly from this range).
        white_balance: per-channel gain drawn from 1 ± this.
        exposure: global gain range.
        haze: visibility range of the distance haze (m).
        noise: scale of the sensor's read and shot noise.
    """
    palette: float = 1.0
    texture: float = 1.0
    shadow: tuple[float, float] = (0.3, 0.5)
    white_balance: float = 0.15
    exposure: tuple[float, float] = (0.7, 1.2)
    haze: tuple[float, float] = (250, 500)
    noise: float = 1.0


HARSH = Look()  # the first benchmark's camera: the stress styles are seen through it


def _look_albedo(scene: dict, look: Look) -> np.ndarray:
    """Per-pixel colour ``[H,W,3]`` with the palette ``look.palette`` of the way from source to real."""
    a = look.palette
    return _albedo(scene, (1 - a) * _SOURCE + a * _REAL, (1 - a) * _TINT_SOURCE + a * _TINT_REAL)


def _real_linear(scene: dict, rng: np.random.Generator, look: Look) -> np.ndarray:
    """The real-camera image before the sensor: textured albedo × light, with haze; ``[H,W,3]`` float."""
    mat, depth = scene["material"], scene["depth"]
    H, W = mat.shape
    img = _look_albedo(scene, look)
    fine = cv2.GaussianBlur(rng.standard_normal((H, W)).astype(np.float32), (0, 0), 0.6) * 1.5
    coarse = _noise(rng, H, W, cell=max(4.0, W / 40))
    img = img * np.clip(1 + look.texture * (_FINE[mat] * fine + _COARSE[mat] * coarse), 0.2, 2.0)[..., None]
    # Light: sun from one side, cast shadows (blotches of shade on the ground), sky brighter at the top.
    shade = (_noise(rng, H, W, cell=W / 8) > rng.uniform(0.2, 0.8)).astype(np.float32)
    shade = cv2.GaussianBlur(shade, (0, 0), max(1.0, W / 200))
    light = 1 - rng.uniform(*look.shadow) * shade * _GROUND[mat]
    sky = mat == S.M_SKY
    rows = np.linspace(0.15, -0.1, H, dtype=np.float32)[:, None]
    img = img * light[..., None] + (sky * rows)[..., None]
    # Per-image white balance and exposure.
    wb = look.white_balance
    img = img * rng.uniform(1 - wb, 1 + wb, 3).astype(np.float32) * rng.uniform(*look.exposure)
    # Distance haze (aerial perspective): far things fade to a pale blue-grey.
    t = np.exp(-depth / rng.uniform(*look.haze))[..., None]
    return img * t + np.float32([0.72, 0.76, 0.82]) * (1 - t)


def _camera(img: np.ndarray, rng: np.random.Generator, look: Look) -> np.ndarray:
    """Vignetting, optical blur, sensor noise and a tone curve on a linear image."""
    H, W = img.shape[:2]
    img = _sensor(img * _vignette(H, W, rng.uniform(0.3, 0.6)), rng, blur=rng.uniform(0.6, 1.0) * W / 512 + 0.3,
                  read=0.015 * look.noise, shot=0.02 * look.noise)
    return _to_uint8(img, gamma=rng.uniform(0.9, 1.15))


# The calibrated camera (source-only keeps about half of the oracle's mIoU; docs/benchmark.md): three
# quarters of the way to the real palette, lighter texture, shadows and white balance than HARSH.
CALIBRATED_LOOK = Look(palette=0.75, texture=0.8, shadow=(0.2, 0.4), white_balance=0.1, exposure=(0.8, 1.15))


def real(scene: dict, rng: np.random.Generator, look: Look = CALIBRATED_LOOK) -> np.ndarray:
    """A different camera: textures, shadows, another palette and white balance, noise, blur, vignetting."""
    return _camera(_real_linear(scene, rng, look), rng, look)


def _fogged(scene: dict, rng: np.random.Generator, visibility: tuple[float, float], look: Look) -> np.ndarray:
    """``real`` through homogeneous fog whose visibility (t = 5 %) is drawn from ``visibility`` metres."""
    img = _real_linear(scene, rng, look)
    H, W = img.shape[:2]
    beta = 3.0 / rng.uniform(*visibility)
    t = np.exp(-beta * scene["depth"])[..., None]
    airlight = np.float32([0.78, 0.80, 0.82]) * rng.uniform(0.85, 1.05)
    img = img * t + airlight * (1 - t)
    img = _sensor(img * _vignette(H, W, 0.3), rng, blur=1.0 * W / 512 + 0.4, read=0.015, shot=0.02)
    return _to_uint8(img)


def fog(scene: dict, rng: np.random.Generator, look: Look = CALIBRATED_LOOK) -> np.ndarray:
    """Light to moderate fog (visibility 250–600 m: Foggy Cityscapes uses 150, 300 and 600 m)."""
    return _fogged(scene, rng, visibility=(250, 600), look=look)


def fog_dense(scene: dict, rng: np.random.Generator) -> np.ndarray:
    """Stress style: dense fog (visibility 60–150 m), the benchmark's first fog."""
    return _fogged(scene, rng, visibility=(60, 150), look=HARSH)


def _night(scene: dict, rng: np.random.Generator, ambient: tuple[float, float], sky_rgb: tuple[float, float, float],
           read: float, shot: float, gamma: float, look: Look) -> np.ndarray:
    """Ambient light, ego headlights, street lamps and lit windows that glow, then sensor noise."""
    mat, tint, depth = scene["material"], scene["tint"], scene["depth"]
    H, W = mat.shape
    albedo = _look_albedo(scene, look)
    albedo = albedo * np.clip(1 + _FINE[mat][..., None] * 0.5 * _noise(rng, H, W, 2.0)[..., None], 0.5, 1.5)
    # Emitters: lamps, vehicle lights and traffic lights always; windows where their tint says "lit".
    lit = tint % 3 == 0
    emit = np.where(mat == S.M_WINDOW, _EMIT[mat] * lit, _EMIT[mat]).astype(np.float32)
    emit_rgb = _EMIT_RGB[mat] * emit[..., None]
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
    img = _sensor(img, rng, blur=0.5 * W / 512 + 0.3, read=read, shot=shot)
    return _to_uint8(img, gamma=gamma)


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
          streaks: float, veil: tuple[float, float]) -> np.ndarray:
    """Overcast light dimmed by ``dim``, a wet ground mirroring what stands on it (``wet``), rain streaks of
    brightness ``streaks`` and a veil of spray (``veil``)."""
    mat = scene["material"]
    H, W = mat.shape
    img = _real_linear(scene, rng, look) * rng.uniform(*dim)
    # Wet ground: darker, with a vertically smeared copy of the image above it (reflections of cars, poles, lamps).
    ground = _GROUND[mat][..., None]
    smear = cv2.blur(np.ascontiguousarray(img[::-1]), (max(1, W // 128), max(3, H // 10)))[::-1]
    img = img * (1 - 0.35 * ground) + ground * rng.uniform(*wet) * smear
    img = img + streaks * (1 + 0.6 * rng.random()) * _streaks(rng, H, W, 0.004, H / 12)[..., None]
    haze = np.float32([0.6, 0.62, 0.65]) * rng.uniform(*veil)
    img = _sensor(img * (1 - haze.mean()) + haze, rng, blur=0.9 * W / 512 + 0.4, read=0.02, shot=0.025)
    return _to_uint8(img)


def rain(scene: dict, rng: np.random.Generator, look: Look = CALIBRATED_LOOK) -> np.ndarray:
    """Overcast rain: dimmer flat light, a wet road that mirrors what stands on it, streaks, a veil of spray."""
    return _rain(scene, rng, look, dim=(0.75, 0.9), wet=(0.2, 0.35), streaks=0.15, veil=(0.05, 0.12))


RENDERERS = {"source": source, "real": real, "fog": fog, "night": night, "rain": rain,
             "fog-dense": fog_dense, "night-dark": night_dark}


def render_style(scene: dict, style: str, rng: np.random.Generator) -> np.ndarray:
    """The scene's image in ``style``: uint8 ``[H,W,3]`` RGB."""
    return RENDERERS[style](scene, rng)
