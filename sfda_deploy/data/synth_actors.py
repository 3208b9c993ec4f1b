"""The movable things of a synthetic scene: vehicles in lanes and parked, pedestrians, (ridden) cycles.

``Actors`` is mixed into ``synth_scene.Scene``: each ``add_*`` queues a draw closure at its depth, and the
scene paints the queue far to near after the static structures."""
from __future__ import annotations

import numpy as np

from sfda_deploy.data.synth_geometry import (BICYCLE, BUS, CAR, M_BIKE, M_BUS, M_CAR, M_CLOTHES, M_GLASS,
                                             M_HEAD, M_MOTO, M_SKIN, M_TAIL, M_TRUCK, M_TYRE, MOTORCYCLE,
                                             PERSON, RIDER, TRUCK)


class Actors:
    """Vehicles, people and cycles; needs the scene's ``rng``, ``cam``, ``cv``, ``rw``, ``sw``, ``layout``,
    ``objects``, ``tint``, ``lanes``, ``p``, ``vertical_strip`` and ``side_of`` (``synth_scene.Scene``)."""

    # ---- vehicles ----------------------------------------------------------------------------
    def vehicles(self):
        rng, rw, layout = self.rng, self.rw, self.layout
        lanes = self.lanes()
        for lane in range(lanes):
            x = -rw / 2 + (lane + 0.5) * rw / lanes
            oncoming = lane == 0
            z = self.cam.z_near + rng.uniform(1, 12)
            for _ in range(rng.integers(*layout.vehicles_per_lane)):
                kind = rng.choice(["car", "truck", "bus"], p=list(layout.vehicle_kinds))
                if z > 100:
                    break
                self.add_vehicle(kind, x + rng.uniform(-0.3, 0.3), z, oncoming)
                z += rng.uniform(10, 35)
        for side in (-1, 1):  # parked cars along the curb
            if rng.random() < layout.parked:
                for z in np.arange(self.cam.z_near + rng.uniform(0, 8), 60, rng.uniform(5, 9)):
                    if rng.random() < 0.7:
                        self.add_vehicle("car", side * (rw / 2 - 1.0), z, False)

    def add_vehicle(self, kind, X, Z, oncoming):
        w, h, L = {"car": (1.8, 1.5, 4.3), "truck": (2.5, 3.5, 8.0), "bus": (2.55, 3.1, 12.0)}[kind]
        w *= self.rng.uniform(0.92, 1.08)
        label = {"car": CAR, "truck": TRUCK, "bus": BUS}[kind]
        mat = {"car": M_CAR, "truck": M_TRUCK, "bus": M_BUS}[kind]
        t = self.tint()

        def draw():
            cv, p = self.cv, self.p
            sx = -self.side_of(X, Z)  # the visible side is the one facing the camera's line of sight
            xs = X + sx * w / 2
            body = h * 0.55 if kind == "car" else h
            # side face, wheels on it, then the near face
            self.vertical_strip(xs, 0.25, body, Z, Z + L, label, mat, t)
            if kind == "car":
                self.vertical_strip(xs - sx * 0.15, body, h, Z + 0.25 * L, Z + 0.7 * L, label, M_GLASS, t)
            elif kind == "bus":
                self.vertical_strip(xs, 1.4, 2.6, Z + 1.0, Z + L - 1.0, label, M_GLASS, t)
            for zw in (Z + 0.18 * L, Z + 0.82 * L):
                c = p(xs, 0.33, zw)
                r = self.cam.f * 0.33 / self.cam.depth(zw)
                cv.ellipse(c, (r * 0.45, r), label, M_TYRE, t, z=zw)
            x0, x1 = X - w / 2, X + w / 2
            face = np.concatenate([p([x0, x1], 0.25, Z), p([x1, x0], body, Z)])
            cv.poly(face, label, mat, t, z=Z)
            for xw in (x0 + 0.15, x1 - 0.45):
                cv.poly(np.concatenate([p([xw, xw + 0.3], 0.0, Z), p([xw + 0.3, xw], 0.3, Z)]), label, M_TYRE, t, z=Z)
            if kind == "car":
                cabin = np.concatenate([p([x0 + 0.1, x1 - 0.1], body, Z + 0.6), p([x1 - 0.3, x0 + 0.3], h, Z + 1.0)])
                cv.poly(cabin, label, mat, t, z=Z)
                glass = np.concatenate([p([x0 + 0.2, x1 - 0.2], body + 0.05, Z + 0.6), p([x1 - 0.35, x0 + 0.35], h - 0.1, Z + 1.0)])
                cv.poly(glass, label, M_GLASS, t, z=Z)
            elif kind == "bus":
                cv.poly(np.concatenate([p([x0 + 0.2, x1 - 0.2], 1.5, Z), p([x1 - 0.2, x0 + 0.2], h - 0.3, Z)]), label, M_GLASS, t)
            lamp = M_HEAD if oncoming else M_TAIL
            ly = body - 0.35 if kind == "car" else 0.9
            for xl in (x0 + 0.1, x1 - 0.4):
                cv.poly(np.concatenate([p([xl, xl + 0.3], ly, Z), p([xl + 0.3, xl], ly + 0.15, Z)]), label, lamp, 255)
        self.objects.append((Z, draw))

    # ---- people --------------------------------------------------------------------------
    def people(self):
        rng, rw = self.rng, self.rw
        for _ in range(rng.integers(*self.layout.people)):
            side = rng.choice([-1, 1])
            X = side * (rw / 2 + rng.uniform(0.4, self.sw[(side + 1) // 2] - 0.2))
            self.add_person(X, rng.uniform(self.cam.z_near + 1, 30))
        if hasattr(self, "crossing"):
            for _ in range(rng.integers(0, 4)):
                self.add_person(rng.uniform(-rw / 2, rw / 2), self.crossing + rng.uniform(0.5, 3))
        for _ in range(rng.integers(*self.layout.cycles)):
            moto = rng.random() < 0.45
            if rng.random() < 0.25:  # parked bicycle on the sidewalk
                side = rng.choice([-1, 1])
                self.add_cycle(side * (rw / 2 + 0.8), rng.uniform(self.cam.z_near + 1, 30), False, False)
            else:
                self.add_cycle(rng.uniform(-rw / 2 + 1, rw / 2 - 1), rng.uniform(self.cam.z_near + 2, 28), moto, True)

    def add_person(self, X, Z):
        rng = self.rng
        height, stride, t = rng.uniform(1.55, 1.95), rng.uniform(0.0, 0.35), self.tint()

        def draw():
            s, (bx, by) = self.cam.f / self.cam.depth(Z) * height / 1.75, self.p(X, 0, Z)
            pt = lambda dx, y: (bx + dx * s, by - y * s)  # noqa: E731 - local metres → pixels
            cv, lw = self.cv, max(1, 0.2 * s)
            for d in (-stride, stride):
                cv.line(pt(0, 0.9), pt(d, 0.05), lw, PERSON, M_CLOTHES, t ^ 0x55, z=Z)
            cv.poly([pt(-0.25, 0.85), pt(0.25, 0.85), pt(0.27, 1.45), pt(-0.27, 1.45)], PERSON, M_CLOTHES, t, z=Z)
            for d in (-1, 1):
                cv.line(pt(d * 0.26, 1.42), pt(d * 0.32, 0.85), max(1, 0.14 * s), PERSON, M_CLOTHES, t, z=Z)
            cv.ellipse(pt(0, 1.6), (0.13 * s, 0.15 * s), PERSON, M_SKIN, t, z=Z)
        self.objects.append((Z, draw))

    def add_cycle(self, X, Z, moto: bool, ridden: bool):
        d, t = self.rng.choice([-1, 1]), self.tint()
        label = MOTORCYCLE if moto else BICYCLE

        def draw():
            s, (bx, by) = self.cam.f / self.cam.depth(Z), self.p(X, 0, Z)
            pt = lambda dx, y: (bx + d * dx * s, by - y * s)  # noqa: E731
            cv, r = self.cv, 0.33 * s
            for wx in (-0.55, 0.55):
                cv.ellipse(pt(wx, 0.33), (r, r), label, M_TYRE, t, z=Z, thickness=max(1, (0.15 if moto else 0.1) * s))
            if moto:
                cv.poly([pt(-0.5, 0.4), pt(0.5, 0.45), pt(0.55, 0.8), pt(0.1, 0.95), pt(-0.45, 0.85)], label, M_MOTO, t, z=Z)
            else:
                for a, b in (((-0.55, 0.33), (0.0, 0.3)), ((0.0, 0.3), (-0.2, 0.9)), ((-0.2, 0.9), (-0.55, 0.33)),
                             ((0.0, 0.3), (0.38, 0.85)), ((-0.2, 0.9), (0.38, 0.85)), ((0.38, 0.85), (0.55, 0.33))):
                    cv.line(pt(*a), pt(*b), max(1, 0.1 * s), label, M_BIKE, t, z=Z)
            cv.line(pt(0.38, 0.85), pt(0.42, 1.05), max(1, 0.05 * s), label, M_BIKE, t, z=Z)
            if ridden:
                lw = max(1, 0.2 * s)
                cv.line(pt(-0.15, 0.95), pt(0.1, 0.6), lw, RIDER, M_CLOTHES, t, z=Z)
                cv.line(pt(0.1, 0.6), pt(0.0, 0.3), lw, RIDER, M_CLOTHES, t, z=Z)
                cv.poly([pt(-0.28, 0.95), pt(-0.05, 0.95), pt(0.15, 1.5), pt(-0.1, 1.55)], RIDER, M_CLOTHES, t, z=Z)
                cv.line(pt(0.05, 1.45), pt(0.42, 1.05), max(1, 0.14 * s), RIDER, M_CLOTHES, t, z=Z)
                cv.ellipse(pt(0.08, 1.7), (0.14 * s, 0.15 * s), RIDER, M_SKIN, t, z=Z)
        self.objects.append((Z, draw))
