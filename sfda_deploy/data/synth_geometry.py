"""Drawing primitives of the synthetic benchmark: the label ids and materials it paints, the pinhole
camera and the canvas (label/material/tint image plus depth). ``synth_scene`` composes scenes with them."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Cityscapes labelIds used by the generator (all 19 evaluated classes but train).
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN = 7, 8, 11, 12, 13, 17, 19, 20
VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE = 21, 22, 23, 24, 25, 26, 27, 28, 32, 33

# Materials: what a pixel looks like (styles give each a colour table indexed by tint).
(M_SKY, M_CLOUD, M_ROAD, M_MARK, M_SIDEWALK, M_BUILDING, M_WINDOW, M_WALL, M_FENCE, M_POLE, M_LAMP,
 M_LIGHT_BOX, M_RED, M_GREEN, M_SIGN, M_VEG, M_TRUNK, M_TERRAIN, M_SKIN, M_CLOTHES, M_CAR, M_GLASS,
 M_TYRE, M_TAIL, M_HEAD, M_TRUCK, M_BUS, M_BIKE, M_MOTO) = range(29)
NUM_MATERIALS = 29
FAR = 1e4  # depth of the sky
NEAR = 0.3  # near plane (m): depths are clipped to it, objects nearer than OUT_OF_VIEW are not drawn
OUT_OF_VIEW = 1.0


@dataclass
class Camera:
    H: int
    W: int
    y_h: float    # horizon row
    vx: float     # vanishing column
    f: float      # focal length, pixels
    cam_h: float  # camera height, m
    cam_x: float  # lateral camera position, m
    k: float      # road curvature
    ego: float = 0.0  # metres driven along the road (a moving camera, ``synth_drive``); 0: a still image

    def depth(self, Z):
        """World depth ``Z`` → depth ahead of the camera once it has driven ``ego`` (clipped to ``NEAR``).
        The camera follows the road, so the curvature term uses this depth too."""
        return np.maximum(np.asarray(Z, float) - self.ego, NEAR)

    def in_view(self, Z) -> bool:
        return float(Z) - self.ego >= OUT_OF_VIEW

    def project(self, X, Y, Z):
        X, Y, Z = np.broadcast_arrays(np.asarray(X, float), np.asarray(Y, float), self.depth(Z))
        x = self.vx + self.f * (X + self.k * Z**2 - self.cam_x) / Z
        y = self.y_h + self.f * (self.cam_h - Y) / Z
        return np.stack([x, y], -1)

    @property
    def z_near(self) -> float:
        """Depth of the ground at the bottom row."""
        return self.f * self.cam_h / (self.H - self.y_h)


class Canvas:
    """Label/material/tint packed in one uint8 image (one fillPoly per shape) plus a depth map."""

    def __init__(self, H: int, W: int, ego: float = 0.0):
        self.lmt = np.zeros((H, W, 3), np.uint8)
        self.depth = np.full((H, W), FAR, np.float32)
        self.ego = ego  # depths are written relative to the moving camera (``Camera.ego``)

    def _z(self, z) -> float:
        return max(float(z) - self.ego, NEAR)

    @staticmethod
    def _pts(points) -> np.ndarray:
        return np.clip(np.round(np.asarray(points) * 4), -2**20, 2**20).astype(np.int32).reshape(-1, 1, 2)

    def poly(self, points, label, mat, tint=0, z=None):
        pts = [self._pts(points)]
        cv2.fillPoly(self.lmt, pts, (label, mat, tint), cv2.LINE_8, shift=2)
        if z is not None:
            cv2.fillPoly(self.depth, pts, self._z(z), cv2.LINE_8, shift=2)

    def line(self, p0, p1, width, label, mat, tint=0, z=None):
        a, b = tuple(int(v) for v in np.round(p0)), tuple(int(v) for v in np.round(p1))
        t = max(1, int(round(width)))
        cv2.line(self.lmt, a, b, (label, mat, tint), t)
        if z is not None:
            cv2.line(self.depth, a, b, self._z(z), t)

    def ellipse(self, centre, axes, label, mat, tint=0, z=None, thickness=-1):
        c = tuple(int(v) for v in np.round(centre))
        ax = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
        t = thickness if thickness < 0 else max(1, int(round(thickness)))
        cv2.ellipse(self.lmt, c, ax, 0, 0, 360, (label, mat, tint), t)
        if z is not None:
            cv2.ellipse(self.depth, c, ax, 0, 0, 360, self._z(z), t)


def depth_steps(z0: float, z1: float, n: int = 10) -> np.ndarray:
    return np.geomspace(z0, z1, n)
