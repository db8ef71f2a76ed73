"""Tissue as maps on the beam grid, and the soft shapes anatomy painters draw them with.

An anatomy painter receives a :class:`_Field` (where each beam sample sits in tissue coordinates,
plus smooth random fields moving with the tissue) and returns :class:`_Maps` (backscatter,
attenuation, blood flow). Shapes are soft indicators (0..1 with a linear ramp) so that edges
are anti-aliased and masks can be blended with the painter's algorithm (``_Maps.paint``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class _Field:
    """What an anatomy painter sees, all (D, L) float32 on the beam grid.

    z, x: tissue coordinates of each sample after motion; s1, s2: smooth random fields moving with
    the tissue (coarse / fine).
    """

    z: np.ndarray
    x: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    phase: float
    elevation: float


@dataclass
class _Maps:
    """Acoustic properties on the beam grid, all (D, L) float32.

    echo: backscatter amplitude (1 = liver parenchyma, ~0.02 = clear fluid, >3 = specular interface).
    alpha: attenuation relative to soft tissue (1); fluid ~0.15, dense solid ~3, bone/air 15-25.
    flow: signed blood velocity, + towards the probe, in [-1, 1] (colour Doppler).
    post: echo added after attenuation (reverberation/ring-down: it is not attenuated like tissue).
    """

    echo: np.ndarray
    alpha: np.ndarray
    flow: np.ndarray
    post: np.ndarray

    @classmethod
    def filled(cls, shape: tuple[int, int], echo: float | np.ndarray = 1.0) -> _Maps:
        e = np.broadcast_to(np.asarray(echo, np.float32), shape).astype(np.float32)
        return cls(e, np.ones(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    def paint(self, m: np.ndarray, echo=None, alpha=None, flow=None) -> None:
        """Blend properties in where the soft mask ``m`` (0..1) is set (painter's algorithm)."""
        if echo is not None:
            self.echo += m * (echo - self.echo)
        if alpha is not None:
            self.alpha += m * (alpha - self.alpha)
        if flow is not None:
            self.flow += m * (flow - self.flow)


def _ell(z, x, cz, cx, rz, rx, ang=0.0):
    """Normalised elliptical radius (1 on the boundary) of an ellipse centred (cz, cx) with
    semi-axes (rz, rx) rotated by ``ang`` radians."""
    dz, dx = z - cz, x - cx
    if ang:
        c, s = math.cos(ang), math.sin(ang)
        dz, dx = c * dz - s * dx, s * dz + c * dx
    return np.sqrt((dz / rz) ** 2 + (dx / rx) ** 2)


def _inside(r, edge=0.08):
    """Soft indicator of ``r < 1`` with a linear ramp ``edge`` wide."""
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0)


def _step(d, edge=0.01):
    """Soft indicator of ``d > 0``."""
    return np.clip(d / edge + 0.5, 0.0, 1.0)


def _band(z, lo, hi, edge=0.008):
    """Soft indicator of ``lo < z < hi`` (lo/hi may be arrays: undulating layers)."""
    return _step(z - lo, edge) * _step(hi - z, edge)


def _ridge(d, width):
    """Gaussian line profile: bright interface where ``d == 0``."""
    return np.exp(-((d / width) ** 2))


def _seg_dist(z, x, a, b):
    """Distance from each point to the segment a -> b (points as (z, x))."""
    az, ax = a
    bz, bx = b
    vz, vx = bz - az, bx - ax
    t = np.clip(((z - az) * vz + (x - ax) * vx) / max(1e-9, vz * vz + vx * vx), 0.0, 1.0)
    return np.hypot(z - (az + t * vz), x - (ax + t * vx))
