"""Probe footprints on the screen: where a sector, linear or curved image sits, its mask, and the
beam-space grid (depth sample x scan line) that the signal chain renders on and scan-converts from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PROBES = ("sector", "linear", "curved")


@dataclass(frozen=True)
class ProbeGeometry:
    """Where the imaging footprint sits on a ``height x width`` screen.

    ``sector`` (phased array) and ``curved`` beams fan out from ``(apex_y, apex_x)`` between radii
    ``r0`` (probe face; ~0 for a phased array, the radius of curvature for a curved array, whose
    apex is virtual and above the image) and ``r1``, over ``+-half_angle`` radians. ``linear`` is the
    rectangle ``[top, bottom) x [left, right)``. Rows ``[0, banner_rows)`` hold the banner text and
    rows ``[banner_rows, top)`` stay black. Tissue coordinates: ``z = (y - top) / depth_px``,
    ``x = (x_px - width / 2) / depth_px``.
    """

    kind: str
    height: int
    width: int
    top: int
    bottom: int
    banner_rows: int
    apex_y: float = 0.0
    apex_x: float = 0.0
    r0: float = 0.0
    r1: float = 0.0
    half_angle: float = 0.0
    left: int = 0
    right: int = 0
    depth_cm: float = 16.0

    @property
    def depth_px(self) -> float:
        """Pixels per unit of tissue depth ``z``."""
        return float(self.bottom - self.top)

    def bbox(self) -> tuple[int, int, int, int]:
        """Footprint bounding box ``(x0, y0, x1, y1)``, inclusive-exclusive, in pixels."""
        if self.kind == "linear":
            return self.left, self.top, self.right, self.bottom
        half_w = self.r1 * math.sin(self.half_angle)
        return (math.floor(self.apex_x - half_w), self.top, math.ceil(self.apex_x + half_w) + 1, self.bottom)

    def mask(self) -> np.ndarray:
        """(H, W) bool: True inside the imaging footprint."""
        return _beam_grid(self).mask

    def tissue_to_pixel(self, z: float, x: float) -> tuple[int, int]:
        """Tissue coordinates -> pixel ``(row, col)``."""
        return (round(self.top + z * self.depth_px), round(self.width / 2 + x * self.depth_px))


def probe_geometry(probe: str, height: int, width: int) -> ProbeGeometry:
    """Scanner-like layout for ``probe`` on a ``height x width`` screen: banner strip on top, black
    gap, footprint, room for an ECG trace below and for the depth ticks and grey bar on the right."""
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    banner_rows = max(10, round(0.065 * height))
    top = max(banner_rows + 4, round(0.10 * height))
    bottom = height - max(12, round(0.10 * height))
    depth = bottom - top
    cx = width / 2.0
    max_half_w = cx - 0.11 * width - 4  # keep clear of the tick marks on the right
    if probe == "linear":
        left = round(0.15 * width)
        return ProbeGeometry(
            "linear", height, width, top, bottom, banner_rows, left=left, right=width - left, depth_cm=4.0
        )
    if probe == "sector":
        half = min(math.radians(40.0), math.asin(min(1.0, max_half_w / depth)))
        return ProbeGeometry(
            "sector",
            height,
            width,
            top,
            bottom,
            banner_rows,
            apex_y=float(top),
            apex_x=cx,
            r0=0.015 * depth,
            r1=float(depth),
            half_angle=half,
            depth_cm=15.0,
        )
    # curved: the probe face is an arc of radius r0 around a virtual apex above the screen. The
    # arc's ends are its highest points, so they sit on row `top`; the centre bulges down.
    r0 = 0.4 * depth
    half = math.radians(32.0)
    for _ in range(3):  # r1 depends on the apex, which depends on the angle: settle the fixed point
        apex_y = top - r0 * math.cos(half)
        r1 = bottom - apex_y
        half = min(math.radians(32.0), math.asin(min(1.0, max_half_w / r1)))
    apex_y = top - r0 * math.cos(half)
    return ProbeGeometry(
        "curved",
        height,
        width,
        top,
        bottom,
        banner_rows,
        apex_y=apex_y,
        apex_x=cx,
        r0=r0,
        r1=bottom - apex_y,
        half_angle=half,
        depth_cm=16.0,
    )


@dataclass(frozen=True, eq=False)
class _BeamGrid:
    """Beam-space sampling grid of one geometry (cached).

    z, x: (D, L) float32 tissue coordinates of every beam sample (no motion).
    path: (D, 1) float32 distance travelled along the beam from the probe face, in depth units.
    map_x, map_y: (H, W) float32 scan-conversion maps into the (D, L) grid (-1 outside).
    mask: (H, W) bool footprint.
    """

    z: np.ndarray
    x: np.ndarray
    path: np.ndarray
    map_x: np.ndarray
    map_y: np.ndarray
    mask: np.ndarray


@lru_cache(maxsize=16)
def _beam_grid(g: ProbeGeometry) -> _BeamGrid:
    depth = g.depth_px
    yy, xx = np.mgrid[0 : g.height, 0 : g.width].astype(np.float32)
    if g.kind == "linear":
        n_d, n_l = int(depth), math.ceil((g.right - g.left) / 1.5)
        ys = np.linspace(g.top, g.bottom - 1, n_d, dtype=np.float32)
        xs = np.linspace(g.left, g.right - 1, n_l, dtype=np.float32)
        py, px = np.meshgrid(ys, xs, indexing="ij")
        path = ((ys - g.top) / depth)[:, None]
        map_y = (yy - g.top) / (g.bottom - 1 - g.top) * (n_d - 1)
        map_x = (xx - g.left) / (g.right - 1 - g.left) * (n_l - 1)
        mask = (yy >= g.top) & (yy < g.bottom) & (xx >= g.left) & (xx < g.right)
    else:
        n_d = int(g.r1 - g.r0)
        # ~2 px between scan lines at the deepest arc: lines diverge, so the far field is coarser
        n_l = math.ceil(2 * g.half_angle * g.r1 / 2.0)
        rs = np.linspace(g.r0, g.r1, n_d, dtype=np.float32)
        ths = np.linspace(-g.half_angle, g.half_angle, n_l, dtype=np.float32)
        rr, tt = np.meshgrid(rs, ths, indexing="ij")
        py, px = g.apex_y + rr * np.cos(tt), g.apex_x + rr * np.sin(tt)
        path = ((rs - g.r0) / depth)[:, None]
        dy, dx = yy - g.apex_y, xx - g.apex_x
        r, th = np.hypot(dy, dx), np.arctan2(dx, dy)
        map_y = (r - g.r0) / (g.r1 - g.r0) * (n_d - 1)
        map_x = (th + g.half_angle) / (2 * g.half_angle) * (n_l - 1)
        mask = (r >= g.r0) & (r <= g.r1) & (np.abs(th) <= g.half_angle) & (dy > 0) & (yy >= g.top)
        mask &= yy < g.bottom
    map_x = np.where(mask, map_x, -1).astype(np.float32)
    map_y = np.where(mask, map_y, -1).astype(np.float32)
    z = ((py - g.top) / depth).astype(np.float32)
    x = ((px - g.width / 2.0) / depth).astype(np.float32)
    for a in (z, x, map_x, map_y, mask):
        a.flags.writeable = False
    return _BeamGrid(z, x, path.astype(np.float32), map_x, map_y, mask)
