"""Geometry of the synthetic benchmark: a random street scene seen by a pinhole camera.

``render_scene(rng, H, W)`` returns label (Cityscapes labelIds), material, tint and depth maps. The
appearance (``synth_styles``) is computed from material + tint + depth only, so every style of an
image shares its geometry and its label exactly: the styles differ in appearance alone.

World coordinates: X lateral (m, relative to the road's centre line, right positive), Y height above
the ground, Z depth ahead of the camera. A point projects to ``x = vx + f*(X + k*Z² - cam_x)/Z``,
``y = y_h + f*(cam_h - Y)/Z`` (``k*Z²`` bends the road). Structures are painted far to near, then
objects sorted by depth, so nearer things occlude farther ones.
"""
from __future__ import annotations

import numpy as np

from sfda_deploy.data.synth_actors import Actors
from sfda_deploy.data.synth_shifts import SOURCE_LAYOUT, SOURCE_RIG, Layout, Rig, distort
from sfda_deploy.data.synth_geometry import (BUILDING, FENCE, LIGHT, M_BUILDING, M_CLOUD, M_FENCE, M_GREEN,
                                             M_LAMP, M_LIGHT_BOX, M_MARK, M_POLE, M_RED, M_ROAD, M_SIDEWALK,
                                             M_SIGN, M_SKY, M_TERRAIN, M_TRUNK, M_VEG, M_WALL, M_WINDOW, POLE,
                                             ROAD, SIDEWALK, SIGN, SKY, TERRAIN, VEGETATION, WALL, Canvas,
                                             Camera, depth_steps)


class Scene(Actors):
    """Draws one random scene on a canvas. Public entry: ``render_scene``."""

    def __init__(self, rng: np.random.Generator, H: int, W: int, layout: Layout = SOURCE_LAYOUT,
                 rig: Rig = SOURCE_RIG):
        self.rng, self.H, self.W, self.layout = rng, H, W, layout
        u = rng.uniform
        self.cam = Camera(H, W, y_h=H * u(*rig.horizon), vx=W * u(0.42, 0.58), f=W * u(*rig.focal),
                          cam_h=u(*rig.height), cam_x=0.0, k=u(-1, 1) * 0.0025)
        self.rw = u(*layout.road_width)               # road width
        self.cam.cam_x = self.rw / 4 * u(0.2, 1.2)    # drive in the right half
        self.sw = (u(*layout.sidewalk), u(*layout.sidewalk))  # sidewalk width, left/right
        self.z0, self.far = self.cam.z_near * 0.6, u(90, 150)
        self.cv = Canvas(H, W)
        self.objects: list[tuple[float, callable]] = []  # (depth, draw) painted far to near

    # ---- helpers ---------------------------------------------------------------------------
    def p(self, X, Y, Z):
        return self.cam.project(X, Y, Z)

    def lanes(self) -> int:
        return 2 if self.rw < self.layout.three_lanes else 3

    def tint(self) -> int:
        return int(self.rng.integers(0, 256))

    def ground_strip(self, x0, x1, z0, z1, label, mat, tint=0):
        zs = depth_steps(z0, z1)
        pts = np.concatenate([self.p(x0, 0, zs), self.p(x1, 0, zs[::-1])])
        self.cv.poly(pts, label, mat, tint)

    def vertical_strip(self, X, y0, y1, z0, z1, label, mat, tint=0, n=6):
        zs = depth_steps(z0, z1, n)
        pts = np.concatenate([self.p(X, y0, zs), self.p(X, y1, zs[::-1])])
        self.cv.poly(pts, label, mat, tint, z=z0)

    def side_of(self, X, Z) -> float:
        """Screen side (+1 right, -1 left) of a lateral position: which vehicle side is visible."""
        return 1.0 if X + self.cam.k * self.cam.depth(Z)**2 - self.cam.cam_x > 0 else -1.0

    # ---- the scene -------------------------------------------------------------------------
    def render(self):
        cam, cv = self.cam, self.cv
        yh = int(np.ceil(cam.y_h))
        cv.lmt[:yh] = (SKY, M_SKY, 0)
        cv.lmt[yh:] = (TERRAIN, M_TERRAIN, self.tint())
        rows = np.arange(yh, self.H, dtype=np.float32) + 0.5
        cv.depth[yh:] = (cam.f * cam.cam_h / np.maximum(rows - cam.y_h, 1e-3))[:, None]
        self.clouds()
        self.road()
        self.backdrop()
        for side in (-1, 1):
            self.roadside(side)
        self.vehicles()
        self.people()
        for z, draw in sorted(self.objects, key=lambda o: -o[0]):
            if cam.in_view(z):  # a moving camera (``Camera.ego``) has passed the objects behind it
                draw()
        return cv

    def clouds(self):
        for _ in range(self.rng.integers(0, 5)):
            c = (self.rng.uniform(0, self.W), self.rng.uniform(0, self.cam.y_h * 0.7))
            self.cv.ellipse(c, (self.rng.uniform(20, 80) * self.W / 512, self.rng.uniform(5, 15) * self.H / 256),
                            SKY, M_CLOUD, self.tint())

    def road(self):
        rw, sw, z0, z1 = self.rw, self.sw, self.z0, self.far
        self.ground_strip(-rw / 2, rw / 2, z0, z1, ROAD, M_ROAD, self.tint())
        self.ground_strip(-rw / 2 - sw[0], -rw / 2, z0, z1, SIDEWALK, M_SIDEWALK, self.tint())
        self.ground_strip(rw / 2, rw / 2 + sw[1], z0, z1, SIDEWALK, M_SIDEWALK, self.tint())
        for x in (-rw / 2 + 0.3, rw / 2 - 0.3):  # edge lines
            self.ground_strip(x - 0.08, x + 0.08, z0, z1, ROAD, M_MARK)
        lanes = self.lanes()
        for i in range(1, lanes):  # dashed lane lines
            x = -rw / 2 + i * rw / lanes
            start = self.rng.uniform(0, 9)
            for z in np.arange(z0 + start, z1, 9.0):
                self.ground_strip(x - 0.08, x + 0.08, z, z + 3.0, ROAD, M_MARK)
        if self.rng.random() < 0.35:  # zebra crossing
            zc = self.rng.uniform(self.cam.z_near + 3, 30)
            for x in np.arange(-rw / 2 + 0.6, rw / 2 - 0.6, 1.0):
                self.ground_strip(x, x + 0.5, zc, zc + 3.5, ROAD, M_MARK)
            self.crossing = zc

    def backdrop(self):
        """A skyline / tree line at the far end, where the road meets the horizon."""
        z, x = self.far, -self.W * 0.1
        base = self.p(0, 0, z)[1] + 1
        while x < self.W * 1.1:
            width = self.rng.uniform(0.03, 0.12) * self.W
            height = self.cam.f * self.rng.uniform(4, 40) / self.cam.depth(z)
            if self.rng.random() < 0.65:
                self.cv.poly([(x, base), (x + width, base), (x + width, base - height), (x, base - height)],
                             BUILDING, M_BUILDING, self.tint(), z=z)
            else:
                self.cv.ellipse((x + width / 2, base - height * 0.3), (width * 0.6, height * 0.5),
                                VEGETATION, M_VEG, self.tint(), z=z)
                self.cv.poly([(x, base), (x + width, base), (x + width, base - height * 0.3), (x, base - height * 0.3)],
                             VEGETATION, M_VEG, self.tint(), z=z)
            x += width

    def roadside(self, side: int):
        """Buildings, walls, fences, hedges and grass beyond one sidewalk, plus poles, signs, lights, trees."""
        rng, edge = self.rng, self.rw / 2 + self.sw[(side + 1) // 2]
        kinds = ["building", "trees", "wall", "fence", "hedge"]
        weights = np.array(self.layout.roadside)
        z, segments = self.z0 * 0.7, []
        while z < self.far:
            length = rng.uniform(8, 35)
            segments.append((z, min(z + length, self.far), kinds[rng.choice(5, p=weights)],
                             rng.uniform(*self.layout.gap)))
            z += length
        for z0, z1, kind, gap in reversed(segments):  # far to near
            x_in, x_out = side * edge, side * (edge + gap)
            if gap > 0.3:
                self.ground_strip(min(x_in, x_out), max(x_in, x_out), z0, z1, TERRAIN, M_TERRAIN, self.tint())
            if kind == "building":
                self.facade(x_out, z0, z1)
            elif kind == "wall":
                self.vertical_strip(x_out, 0, rng.uniform(1.2, 3.0), z0, z1, WALL, M_WALL, self.tint())
            elif kind == "fence":
                self.fence(x_out, z0, z1)
            elif kind == "hedge":
                self.vertical_strip(x_out, 0, rng.uniform(0.8, 1.8), z0, z1, VEGETATION, M_VEG, self.tint())
            else:
                for zt in np.arange(z0 + rng.uniform(0, 6), z1, rng.uniform(6, 12)):
                    self.add_tree(side * (edge + rng.uniform(0.5, max(gap, 1.0) + 2)), zt)
        self.street_furniture(side, edge)

    def facade(self, X, z0, z1):
        """Buildings along [z0, z1]: several facades of random height, with a window grid."""
        rng = self.rng
        z = z0
        while z < z1:
            zb = min(z + rng.uniform(8, 25), z1)
            h, tint = rng.uniform(*self.layout.building_height), self.tint()
            self.vertical_strip(X, 0, h, z, zb, BUILDING, M_BUILDING, tint)
            floors, wz = int(h // 3.2), rng.uniform(1.0, 1.6)
            if self.cam.f / zb * 1.0 > 1.5:  # windows only where they are at least a few pixels
                for fl in range(floors):
                    y = 1.2 + fl * 3.2
                    for zw in np.arange(z + 0.8, zb - wz, wz * 2.2):
                        pts = np.concatenate([self.p(X, y, [zw, zw + wz]), self.p(X, y + 1.5, [zw + wz, zw])])
                        self.cv.poly(pts, BUILDING, M_WINDOW, self.tint())
            z = zb

    def fence(self, X, z0, z1):
        """A fence along [z0, z1]: boards in the fence material with darker posts every couple of metres,
        so it does not read as a plain wall."""
        rng, t = self.rng, self.tint()
        h = rng.uniform(1.1, 2.0)
        self.vertical_strip(X, 0, h, z0, z1, FENCE, M_FENCE, t)
        for zp in np.arange(z0, z1, rng.uniform(1.5, 2.5)):
            self.vertical_strip(X, 0, h + 0.15, zp, zp + 0.25, FENCE, M_TRUNK, t, n=2)

    def add_tree(self, X, Z):
        if Z < self.cam.z_near:
            return
        rng, t = self.rng, self.tint()
        h, r = rng.uniform(2.0, 3.5), rng.uniform(1.2, 2.5)
        blobs = [(rng.uniform(-0.6, 0.6) * r, h + r * rng.uniform(0.5, 1.3), r * rng.uniform(0.6, 1.0)) for _ in range(4)]

        def draw():
            s = self.cam.f / self.cam.depth(Z)
            base = self.p(X, 0, Z)
            self.cv.poly([base + (-0.15 * s, 0), base + (0.15 * s, 0), base + (0.12 * s, -h * s), base + (-0.12 * s, -h * s)],
                         VEGETATION, M_TRUNK, t, z=Z)
            for dx, y, rr in blobs:
                self.cv.ellipse(base + (dx * s, -y * s), (rr * s, rr * s * 0.9), VEGETATION, M_VEG, t, z=Z)
        self.objects.append((Z, draw))

    def street_furniture(self, side, edge):
        rng, curb = self.rng, side * (self.rw / 2 + 0.5)
        z = self.cam.z_near + rng.uniform(0, 10)
        while z < min(self.far, 100):
            kind = rng.choice(["lamp", "sign", "light"], p=[0.35, 0.35, 0.3])
            self.objects.append((z, self._pole_drawer(kind, curb, z, side)))
            z += rng.uniform(6, 16)

    def _pole_drawer(self, kind, X, Z, side):
        rng, t = self.rng, self.tint()
        h = {"lamp": rng.uniform(6, 9), "sign": rng.uniform(2.2, 3.2), "light": rng.uniform(3.5, 5)}[kind]
        shape, lit = rng.integers(0, 3), rng.integers(0, 2)

        def draw():
            s, base = self.cam.f / self.cam.depth(Z), self.p(X, 0, Z)
            top = base + (0, -h * s)
            self.cv.line(base, top, max(1, 0.3 * s), POLE, M_POLE, t, z=Z)
            if kind == "lamp":
                arm = self.p(X - side * 1.6, h, Z)
                self.cv.line(top, arm, max(1, 0.12 * s), POLE, M_POLE, t, z=Z)
                self.cv.ellipse(arm + (0, 0.1 * s), (0.35 * s, 0.12 * s), POLE, M_LAMP, t, z=Z)
            elif kind == "sign":
                c, r = top + (0, -0.45 * s), 0.55 * s
                if shape == 0:
                    self.cv.ellipse(c, (r, r), SIGN, M_SIGN, t, z=Z)
                elif shape == 1:
                    self.cv.poly([c + (-r, -r), c + (r, -r), c + (r, r), c + (-r, r)], SIGN, M_SIGN, t, z=Z)
                else:
                    self.cv.poly([c + (-r * 1.1, -r * 0.8), c + (r * 1.1, -r * 0.8), c + (0, r * 1.1)], SIGN, M_SIGN, t, z=Z)
            else:
                w, hb = 0.3 * s, 0.75 * s
                c = top + (0, -hb)
                self.cv.poly([c + (-w, -hb), c + (w, -hb), c + (w, hb), c + (-w, hb)], LIGHT, M_LIGHT_BOX, t, z=Z)
                for i, mat in enumerate((M_RED, M_LIGHT_BOX, M_GREEN)):
                    on = (i == 0 and lit) or (i == 2 and not lit)
                    self.cv.ellipse(c + (0, (i - 1) * 0.32 * s), (w * 0.6, w * 0.6), LIGHT,
                                    mat if on else M_LIGHT_BOX, 255 if on else t, z=Z)
        return draw

def render_scene(rng: np.random.Generator, H: int, W: int, layout: Layout = SOURCE_LAYOUT,
                 rig: Rig = SOURCE_RIG) -> dict:
    """One random scene with ``layout`` seen through ``rig`` (the defaults: the source's street and camera).

    Returns:
        ``label`` uint8 ``[H,W]`` Cityscapes labelIds, ``material`` uint8 ``[H,W]`` (``M_*``),
        ``tint`` uint8 ``[H,W]`` per-instance variation, ``depth`` float32 ``[H,W]`` metres (sky: 1e4), and
        ``camera`` (the pinhole's ``y_h``, ``vx``, ``f``, ``cam_h``, ``cam_x``, ``k``: surface patterns are
        drawn in perspective from it). With lens distortion the four maps are warped together.
    """
    scene = Scene(rng, H, W, layout, rig)
    cv = scene.render()
    maps = distort({"label": cv.lmt[..., 0].copy(), "material": cv.lmt[..., 1].copy(),
                    "tint": cv.lmt[..., 2].copy(), "depth": cv.depth}, rig.distortion)
    cam = scene.cam
    return {**maps, "camera": {"y_h": cam.y_h, "vx": cam.vx, "f": cam.f, "cam_h": cam.cam_h, "cam_x": cam.cam_x,
                               "k": cam.k}}
