"""The structured shift families of the synthetic benchmark (v3): knobs of the scene and the camera, not filters
on the finished image.

- ``Layout`` (what the street holds): class frequencies and arrangement — road width, what lines the road,
  building heights, vehicle kinds and density, people. ``SOURCE_LAYOUT`` is the source's.
- ``Rig`` (the camera): field of view, mount height, pitch (horizon row) and barrel lens distortion.
  ``SOURCE_RIG`` is the source's. Distortion warps the label, material, tint and depth maps together
  (nearest-neighbour), so the labels follow the geometry exactly.
- ``Materials`` (class-conditional appearance): per material a base colour, an instance-colour set (e.g. a
  target car-colour distribution) and a surface pattern in world units (cobbles, slabs, brick, paving), drawn
  in perspective from the depth map. A global statistic cannot undo these: they move one class's look
  towards another's.

Local light and weather (depth-dependent fog, lamp pools and headlights at night, wet-road reflections) are the
renderers of ``synth_styles``; a structured style composes one of each family (``synth_styles.STRUCTURED``).
The defaults reproduce the source scene's random draws exactly, so the appearance styles stay bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from sfda_deploy.data import synth_geometry as S


# ---- layout and camera: knobs of the scene -----------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """What lines the street and what drives and walks on it (ranges are drawn uniformly per scene).

    Attributes:
        road_width: carriageway width range (m); 3 lanes from ``three_lanes`` m up.
        sidewalk: sidewalk width range (m), each side.
        roadside: weights of building, trees, wall, fence, hedge along the sidewalks.
        gap: range of the terrain gap between sidewalk and roadside (m).
        building_height: facade height range (m).
        vehicle_kinds: probabilities of car, truck, bus in the lanes.
        vehicles_per_lane: ``integers(lo, hi)`` vehicles per lane.
        parked: probability of a row of parked cars along each curb.
        people: ``integers(lo, hi)`` pedestrians on the sidewalks.
        cycles: ``integers(lo, hi)`` (ridden) bicycles and motorcycles.
    """
    road_width: tuple[float, float] = (6.5, 11.0)
    three_lanes: float = 9.0
    sidewalk: tuple[float, float] = (1.8, 4.5)
    roadside: tuple[float, ...] = (0.36, 0.16, 0.18, 0.2, 0.1)
    gap: tuple[float, float] = (0.0, 4.0)
    building_height: tuple[float, float] = (6.0, 28.0)
    vehicle_kinds: tuple[float, float, float] = (0.7, 0.15, 0.15)
    vehicles_per_lane: tuple[int, int] = (0, 4)
    parked: float = 0.5
    people: tuple[int, int] = (2, 10)
    cycles: tuple[int, int] = (1, 4)


@dataclass(frozen=True)
class Rig:
    """The camera: horizon row (fraction of the height), focal length (fraction of the width), mount height (m)
    and barrel distortion ``k`` (0: a pinhole)."""
    horizon: tuple[float, float] = (0.36, 0.5)
    focal: tuple[float, float] = (0.7, 0.95)
    height: tuple[float, float] = (1.3, 1.7)
    distortion: float = 0.0


SOURCE_LAYOUT = Layout()
SOURCE_RIG = Rig()

# A residential suburb: low houses behind front gardens, many trees and hedges, few vehicles and people.
SUBURB = Layout(road_width=(5.5, 7.5), sidewalk=(1.5, 2.5), roadside=(0.22, 0.38, 0.05, 0.1, 0.25), gap=(2.0, 7.0),
                building_height=(4.0, 9.0), vehicle_kinds=(0.94, 0.04, 0.02), vehicles_per_lane=(0, 2), parked=0.7,
                people=(0, 4), cycles=(0, 2))
# A tree-lined avenue: trees and hedges behind grass verges along most of the street.
AVENUE = Layout(roadside=(0.25, 0.45, 0.05, 0.05, 0.2), gap=(1.0, 5.0))
# An arterial road: a wide carriageway, many trucks and buses, tall buildings, few pedestrians.
ARTERIAL = Layout(road_width=(11.0, 15.0), three_lanes=10.0, sidewalk=(2.0, 3.5), roadside=(0.5, 0.05, 0.25, 0.15, 0.05),
                  building_height=(12.0, 40.0), vehicle_kinds=(0.45, 0.3, 0.25), vehicles_per_lane=(1, 5), parked=0.2,
                  people=(0, 4), cycles=(0, 2))
# A low car (wide lens, low mount, horizon high in the frame) and a van (narrow lens, high mount, pitched
# down), both with lens distortion.
LOW_WIDE = Rig(horizon=(0.36, 0.45), focal=(0.63, 0.75), height=(1.15, 1.35), distortion=0.08)
HIGH_NARROW = Rig(horizon=(0.42, 0.52), focal=(0.9, 1.08), height=(1.7, 2.0), distortion=0.06)


def distort(maps: dict[str, np.ndarray], k: float) -> dict[str, np.ndarray]:
    """Barrel distortion of every per-pixel map of a scene, nearest-neighbour so that labels stay labels.

    An output pixel at normalised radius ``r`` (1 at the corner) samples the pinhole image at
    ``r (1 + k r²) / (1 + k)``: the corners stay the corners, the centre is magnified, straight lines bow outwards.
    """
    if k == 0:
        return maps
    H, W = next(iter(maps.values())).shape[:2]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    half = np.float32(np.hypot(cx, cy))
    dx, dy = (xs - cx) / half, (ys - cy) / half
    scale = (1 + k * (dx * dx + dy * dy)) / (1 + k)
    map_x, map_y = cx + dx * scale * half, cy + dy * scale * half
    return {name: cv2.remap(m, map_x, map_y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
            for name, m in maps.items()}


# ---- materials: class-conditional appearance ---------------------------------------------------------------
@dataclass(frozen=True)
class Pattern:
    """A surface pattern in world units: joints (dark lines) every ``period`` metres along the surface's two
    axes, rows offset by half a cell when ``staggered``, each cell's brightness varied by ``cell_jitter`` and
    its colour pulled towards ``accent`` by up to ``accent_mix`` (a random share per cell)."""
    period: tuple[float, float]
    joint: float = 0.12
    joint_dark: float = 0.45
    staggered: bool = True
    cell_jitter: float = 0.15
    accent: tuple[int, int, int] | None = None
    accent_mix: float = 0.0


@dataclass(frozen=True)
class Materials:
    """Per-material overrides of the target palette.

    Attributes:
        colour: material → base RGB (0–255).
        instances: material → RGB set its instances draw from (by tint), replacing the random instance colour.
        mix: material → how far a pixel leans to its instance colour (0: base colour only).
        pattern: material → ``Pattern`` drawn on it in perspective.
    """
    colour: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    instances: dict[int, tuple[tuple[int, int, int], ...]] = field(default_factory=dict)
    mix: dict[int, float] = field(default_factory=dict)
    pattern: dict[int, Pattern] = field(default_factory=dict)


# Grey/white/black/silver cars (the game's are saturated colours).
MUTED_CARS = ((205, 205, 205), (235, 235, 232), (30, 30, 32), (120, 122, 126), (160, 162, 165), (60, 62, 66),
              (90, 30, 28), (40, 48, 70))
# An old European town: cobbled road, paved sidewalks, brick or pastel plaster facades, stone walls, muted cars,
# yellow signs, dark-green poles.
OLD_TOWN = Materials(
    colour={S.M_ROAD: (92, 90, 88), S.M_BUILDING: (140, 110, 95), S.M_WALL: (165, 160, 150), S.M_POLE: (40, 60, 45),
            S.M_SIGN: (225, 190, 40), S.M_MARK: (215, 215, 205)},
    instances={S.M_CAR: MUTED_CARS,
               S.M_BUILDING: ((150, 75, 55), (170, 90, 65), (235, 220, 180), (225, 190, 185), (200, 205, 190),
                              (120, 60, 45))},
    mix={S.M_CAR: 0.9, S.M_BUILDING: 0.8},
    pattern={S.M_ROAD: Pattern(period=(0.18, 0.18), joint=0.12, joint_dark=0.8, cell_jitter=0.1),
             S.M_SIDEWALK: Pattern(period=(0.2, 0.1), joint=0.12, joint_dark=0.6, cell_jitter=0.12),
             S.M_BUILDING: Pattern(period=(0.25, 0.075), joint=0.15, joint_dark=0.8, cell_jitter=0.1),
             S.M_WALL: Pattern(period=(0.6, 0.35), joint=0.08, joint_dark=0.6, cell_jitter=0.2)})
# Autumn: orange, brown and yellow leaves (near the source's terrain and brick), dry grass, leaf-strewn paths.
AUTUMN = Materials(
    colour={S.M_VEG: (150, 95, 40), S.M_TERRAIN: (150, 130, 80), S.M_TRUNK: (60, 45, 35)},
    instances={S.M_VEG: ((170, 90, 30), (190, 130, 40), (140, 70, 35), (120, 95, 45), (175, 150, 60), (110, 60, 40)),
               S.M_CAR: MUTED_CARS},
    mix={S.M_VEG: 0.85, S.M_CAR: 0.9},
    pattern={S.M_SIDEWALK: Pattern(period=(0.5, 0.5), joint=0.05, joint_dark=0.75, staggered=False, cell_jitter=0.08,
                                   accent=(160, 95, 40), accent_mix=0.5)})
# A newer suburb: concrete-slab road (light, near the source's sidewalk), painted red cycle-lane sidewalks, white
# and beige houses, autumn trees.
CONCRETE_SUBURB = Materials(
    colour={**AUTUMN.colour, S.M_ROAD: (150, 148, 142), S.M_SIDEWALK: (165, 70, 60), S.M_BUILDING: (225, 220, 205),
            S.M_MARK: (240, 240, 240), S.M_FENCE: (220, 220, 215)},
    instances={**AUTUMN.instances,
               S.M_BUILDING: ((230, 225, 210), (215, 200, 170), (200, 195, 185), (190, 170, 150))},
    mix={**AUTUMN.mix, S.M_BUILDING: 0.7},
    pattern={S.M_ROAD: Pattern(period=(3.5, 5.0), joint=0.02, joint_dark=0.55, staggered=False, cell_jitter=0.05),
             S.M_BUILDING: Pattern(period=(0.3, 0.3), joint=0.0, joint_dark=1.0, cell_jitter=0.04)})
# The same suburb years later: the cycle lanes' red paint worn towards the concrete underneath.
WORN_CONCRETE_SUBURB = replace(CONCRETE_SUBURB, colour={**CONCRETE_SUBURB.colour, S.M_SIDEWALK: (150, 110, 100)})
NO_MATERIALS = Materials()


def _cells(u: np.ndarray, v: np.ndarray, pattern: Pattern) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell indices and joint mask of a pattern at surface coordinates ``u`` (along) and ``v`` (across/up)."""
    pu, pv = pattern.period
    row = np.floor(v / pv)
    shift = 0.5 * (row % 2) if pattern.staggered else 0.0
    col = np.floor(u / pu + shift)
    fu, fv = u / pu + shift - col, v / pv - row
    joint = (np.minimum(fu, 1 - fu) < pattern.joint / 2) | (np.minimum(fv, 1 - fv) < pattern.joint / 2)
    return col.astype(np.int64), row.astype(np.int64), joint


def _hash01(a: np.ndarray, b: np.ndarray, salt: int) -> np.ndarray:
    """A fixed pseudo-random value in [0, 1) per integer pair (a cell's own brightness)."""
    h = (a * 73856093) ^ (b * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def surface_coords(scene: dict, mat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates along each pixel's surface: ground pixels (road, sidewalk, terrain, marks) give
    (lateral X, depth Z); everything else is read as a facade parallel to the road, (depth Z, height Y).
    Also the pixel footprint in metres (``Z / f``), which fades patterns finer than the pixels."""
    H, W = mat.shape
    cam = scene["camera"]
    z = np.minimum(scene["depth"], 500.0)
    rows = np.arange(H, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(W, dtype=np.float32)[None, :] + 0.5
    lateral = (cols - cam["vx"]) * z / cam["f"] + cam["cam_x"] - cam["k"] * z * z
    height = cam["cam_h"] - (rows - cam["y_h"]) * z / cam["f"]
    ground = np.isin(mat, (S.M_ROAD, S.M_SIDEWALK, S.M_TERRAIN, S.M_MARK))
    u = np.where(ground, lateral, z)
    v = np.where(ground, z, height)
    return u.astype(np.float32), v.astype(np.float32), (z / cam["f"]).astype(np.float32)


def material_albedo(scene: dict, base: np.ndarray, tints: np.ndarray, mix: np.ndarray,
                    materials: Materials) -> np.ndarray:
    """Per-pixel colour ``[H,W,3]`` in [0, 1] with the ``materials`` overrides on top of ``base``/``tints``/``mix``
    (tables indexed by material and tint, as ``synth_camera.albedo``)."""
    mat, tint = scene["material"], scene["tint"]
    base, mix = base.copy(), mix.copy()
    for m, rgb in materials.colour.items():
        base[m] = np.float32(rgb) / 255
    for m, v in materials.mix.items():
        mix[m] = v
    colour = base[mat] * (1 - mix[mat][..., None]) + tints[tint] * mix[mat][..., None]
    for m, options in materials.instances.items():
        sel = mat == m
        table = np.float32(options) / 255
        inst = table[tint[sel] % len(table)]
        colour[sel] = base[m] * (1 - mix[m]) + inst * mix[m]
    if materials.pattern:
        u, v, footprint = surface_coords(scene, mat)
        for m, pattern in materials.pattern.items():
            sel = mat == m
            if not sel.any():
                continue
            col, row, joint = _cells(u[sel], v[sel], pattern)
            # Joints thinner than about a pixel fade out, as they do through a real lens.
            visible = np.clip(pattern.joint * min(pattern.period) / footprint[sel] - 0.5, 0, 1)
            cell = 1 + pattern.cell_jitter * (2 * _hash01(col, row, m) - 1)
            shade = cell * (1 - (1 - pattern.joint_dark) * joint * visible)
            px = colour[sel] * shade[:, None]
            if pattern.accent is not None:
                share = pattern.accent_mix * _hash01(col, row, m + 97)[:, None]
                px = px * (1 - share) + np.float32(pattern.accent) / 255 * share
            colour[sel] = px
    return colour
