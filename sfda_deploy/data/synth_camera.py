"""The camera of the synthetic benchmark's real styles: material colour tables, the "game" (source) and
real palettes, textures, light, haze and the sensor, with ``Look`` holding the knobs that say how far a
real camera is from the game look. ``synth_styles`` builds every style from these.

All maths is vectorised numpy/cv2 on ``[H,W]`` / ``[H,W,3]`` float32 images in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sfda_deploy.data import synth_geometry as S
from sfda_deploy.data.synth_shifts import NO_MATERIALS, Materials, material_albedo

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
REAL_PALETTE = _table({
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
SOURCE_PALETTE = _game_look(REAL_PALETTE, saturation=1.8, value=1.3)
SOURCE_PALETTE[S.M_SKY] = np.float32([140, 185, 240]) / 255
SOURCE_PALETTE[S.M_VEG] = np.float32([70, 130, 40]) / 255
# How far a material leans towards its instance's random colour (cars come in all colours, roads do not).
_MIX = _per_material({S.M_CAR: 0.8, S.M_TRUCK: 0.6, S.M_BUS: 0.5, S.M_CLOTHES: 0.85, S.M_BIKE: 0.7, S.M_MOTO: 0.7,
                      S.M_BUILDING: 0.35, S.M_WALL: 0.3, S.M_FENCE: 0.2, S.M_SIGN: 0.25, S.M_SKIN: 0.2,
                      S.M_CLOUD: 0.05}, 0.08)
# Texture amplitude of the real styles: fine grain and coarse blotches (relative luminance change).
FINE = _per_material({S.M_ROAD: 0.10, S.M_SIDEWALK: 0.12, S.M_BUILDING: 0.10, S.M_WALL: 0.12, S.M_VEG: 0.35,
                       S.M_TERRAIN: 0.25, S.M_TRUNK: 0.2, S.M_FENCE: 0.2, S.M_CLOTHES: 0.08}, 0.03)
COARSE = _per_material({S.M_ROAD: 0.12, S.M_SIDEWALK: 0.12, S.M_BUILDING: 0.15, S.M_WALL: 0.15, S.M_VEG: 0.25,
                         S.M_TERRAIN: 0.25, S.M_SKY: 0.06, S.M_CLOUD: 0.1}, 0.04)
# Materials that emit light at night, with their glow strength.
EMIT = _per_material({S.M_LAMP: 3.0, S.M_HEAD: 3.0, S.M_TAIL: 1.5, S.M_RED: 1.5, S.M_GREEN: 1.5, S.M_WINDOW: 0.9})
EMIT_RGB = _table({S.M_LAMP: (255, 210, 140), S.M_HEAD: (255, 250, 230), S.M_TAIL: (255, 30, 20),
                    S.M_RED: (255, 40, 30), S.M_GREEN: (60, 255, 150), S.M_WINDOW: (255, 200, 120)})
GROUND = np.zeros(_NM, bool)
GROUND[[S.M_ROAD, S.M_MARK, S.M_SIDEWALK, S.M_TERRAIN]] = True

# Instance colour of each tint value: fixed tables (not seed-dependent), saturated for source, muted for real.
_TINT_RGB = np.random.default_rng(12345).uniform(0, 1, (256, 3)).astype(np.float32)
TINT_REAL = (0.25 + 0.45 * (0.5 * _TINT_RGB + 0.5 * _TINT_RGB.mean(1, keepdims=True))) ** 1.2  # desaturated, darker
TINT_SOURCE = _game_look(TINT_REAL, saturation=1.8, value=1.3)


def albedo(scene: dict, base: np.ndarray, tints: np.ndarray) -> np.ndarray:
    """Per-pixel colour ``[H,W,3]``: the material's base colour mixed with the instance's tint colour."""
    mat, tint = scene["material"], scene["tint"]
    mix = _MIX[mat][..., None]
    return base[mat] * (1 - mix) + tints[tint] * mix


def smooth_noise(rng: np.random.Generator, H: int, W: int, cell: float) -> np.ndarray:
    """Smooth zero-mean unit-ish noise ``[H,W]`` with features about ``cell`` pixels large."""
    h, w = max(2, int(H / cell) + 2), max(2, int(W / cell) + 2)
    small = rng.standard_normal((h, w)).astype(np.float32)
    return cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)


def vignette(H: int, W: int, strength: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r2 = ((xx - W / 2) / (W / 2)) ** 2 + ((yy - H / 2) / (H / 2)) ** 2
    return (1 - strength * r2 / 2)[..., None]


def sensor(img: np.ndarray, rng: np.random.Generator, blur: float, read: float, shot: float) -> np.ndarray:
    """Optical blur, then photon (signal-dependent) and read noise."""
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    sigma = np.sqrt(read**2 + shot**2 * np.clip(img, 0, None))
    return img + sigma * rng.standard_normal(img.shape).astype(np.float32)


def to_uint8(img: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    img = np.clip(img, 0, 1)
    if gamma != 1.0:
        img = img ** (1 / gamma)
    return (img * 255 + 0.5).astype(np.uint8)


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


def look_albedo(scene: dict, look: Look, materials: Materials = NO_MATERIALS) -> np.ndarray:
    """Per-pixel colour ``[H,W,3]`` with the palette ``look.palette`` of the way from source to real, and the
    class-conditional ``materials`` of a structured style on top (``synth_shifts``)."""
    a = look.palette
    base, tints = (1 - a) * SOURCE_PALETTE + a * REAL_PALETTE, (1 - a) * TINT_SOURCE + a * TINT_REAL
    if materials is NO_MATERIALS:
        return albedo(scene, base, tints)
    return material_albedo(scene, base, tints, _MIX, materials)


def real_linear(scene: dict, rng: np.random.Generator, look: Look, materials: Materials = NO_MATERIALS) -> np.ndarray:
    """The real-camera image before the sensor: textured albedo × light, with haze; ``[H,W,3]`` float."""
    mat, depth = scene["material"], scene["depth"]
    H, W = mat.shape
    img = look_albedo(scene, look, materials)
    fine = cv2.GaussianBlur(rng.standard_normal((H, W)).astype(np.float32), (0, 0), 0.6) * 1.5
    coarse = smooth_noise(rng, H, W, cell=max(4.0, W / 40))
    img = img * np.clip(1 + look.texture * (FINE[mat] * fine + COARSE[mat] * coarse), 0.2, 2.0)[..., None]
    # Light: sun from one side, cast shadows (blotches of shade on the ground), sky brighter at the top.
    shade = (smooth_noise(rng, H, W, cell=W / 8) > rng.uniform(0.2, 0.8)).astype(np.float32)
    shade = cv2.GaussianBlur(shade, (0, 0), max(1.0, W / 200))
    light = 1 - rng.uniform(*look.shadow) * shade * GROUND[mat]
    sky = mat == S.M_SKY
    rows = np.linspace(0.15, -0.1, H, dtype=np.float32)[:, None]
    img = img * light[..., None] + (sky * rows)[..., None]
    # Per-image white balance and exposure.
    wb = look.white_balance
    img = img * rng.uniform(1 - wb, 1 + wb, 3).astype(np.float32) * rng.uniform(*look.exposure)
    # Distance haze (aerial perspective): far things fade to a pale blue-grey.
    t = np.exp(-depth / rng.uniform(*look.haze))[..., None]
    return img * t + np.float32([0.72, 0.76, 0.82]) * (1 - t)


def camera(img: np.ndarray, rng: np.random.Generator, look: Look) -> np.ndarray:
    """Vignetting, optical blur, sensor noise and a tone curve on a linear image."""
    H, W = img.shape[:2]
    img = sensor(img * vignette(H, W, rng.uniform(0.3, 0.6)), rng, blur=rng.uniform(0.6, 1.0) * W / 512 + 0.3,
                  read=0.015 * look.noise, shot=0.02 * look.noise)
    return to_uint8(img, gamma=rng.uniform(0.9, 1.15))
