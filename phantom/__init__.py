"""Synthetic ultrasound ("phantom") generator: the test bed of the whole system.

It renders B-mode frames that look like scanner output -- a sector/linear/curved footprint on black,
burned-in banner text, depth ticks, grey bar, ECG trace, calipers, colour-Doppler boxes -- and writes
small raw collections in the formats real archives hold (PNG/JPEG/BMP/TIFF stills, multi-frame DICOM
cine loops, NIfTI volumes, MP4 videos, broken files), plus a labelled lesion task for fine-tuning.

How a frame is made (it mirrors a scanner's signal chain, so the artefacts come out right by
construction instead of being painted on):

1. Tissue lives in cartesian *tissue coordinates* ``(z, x)``: ``z`` is depth as a fraction of the
   imaging depth (0 = skin, 1 = deepest sample on the centre line), ``x`` the lateral offset from the
   centre line in the same unit. Anatomies are painted there as maps of backscatter strength
   (``echo``), attenuation (``alpha``) and blood velocity (``flow``).
2. The maps are sampled on a *beam grid* (depth sample x scan line), i.e. before scan conversion,
   at the positions the tissue has moved to (``phase``: breathing, heart or fetal motion).
3. Speckle: the tissue is a random sea of sub-resolution scatterers (a complex Gaussian texture,
   generated once per ``scene_seed`` and carried along with the tissue). Each scatterer's echo is
   scaled by the local backscatter, blurred by the point-spread function in beam coordinates
   (axial x lateral, anisotropic) and envelope-detected. The result is Rayleigh-distributed and
   *multiplicative*: a region twice as echogenic gives speckle twice as bright with the same
   relative spread, which is why speckle contrast is the same in bright and dark tissue.
4. Attenuation is integrated along each beam (cumulative sum over depth), and time-gain
   compensation undoes the average soft-tissue loss. A fluid lesion attenuates less than tissue, so
   everything behind it is over-compensated: *posterior acoustic enhancement*. A solid, dense lesion
   (or bone, or air) attenuates more: *posterior acoustic shadowing*.
5. Log compression to a 50 dB display range, then scan conversion to the screen with ``cv2.remap``.
6. Annotations are burned in on top, outside the footprint (except calipers and Doppler colour).

Everything is deterministic from a ``numpy.random.Generator`` (no global RNG), and vectorised.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "ANATOMIES",
    "PROBES",
    "Lesion",
    "ProbeGeometry",
    "probe_geometry",
    "render_frame",
    "write_demo_corpus",
    "write_downstream_task",
]

PROBES = ("sector", "linear", "curved")
ANATOMIES = ("liver", "thyroid", "breast", "fetal", "cardiac", "kidney")

US_MULTIFRAME_SOP = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's example root: fine for synthetic data

# Signal chain constants (dimensionless units: echo 1 = liver parenchyma, depth 1 = imaging depth).
_K_ATT = 4.5  # soft-tissue round-trip attenuation over the full depth, in nepers (~39 dB)
_TGC_FRACTION = 0.9  # TGC undoes 90 % of it: deep tissue stays a little darker, as on real scanners
_DYN_RANGE_DB = 50.0  # displayed dynamic range after log compression
_OFFSET_DB = 22.0  # echo 1 (parenchyma) maps to ~ 255 * 22 / 50 = 112 grey
_TEX_MARGIN_Z = 0.3  # speckle texture margin around the footprint (room for motion and pan)
_TEX_MARGIN_X = 0.3


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Scene texture: scatterers and smooth tissue-texture fields, fixed in tissue coordinates
# --------------------------------------------------------------------------------------------
@lru_cache(maxsize=6)
def _scene_texture(scene_seed: int, depth_px: int, half_width: float) -> np.ndarray:
    """(Th, Tw, 4) float32 texture over z in [-m, 1+m], x in [-half_width, half_width], one texel per
    screen pixel: channels 0-1 = complex Gaussian scatterers (white: each texel is an independent
    sub-resolution scatterer), 2-3 = smooth fields (std ~1) for parenchyma texture and layer shapes.
    Generated once per scene, so nearby cine frames sample the *same* scatterers (coherent speckle)."""
    rng = np.random.default_rng([scene_seed, 0x5EC])
    th = int((1 + 2 * _TEX_MARGIN_Z) * depth_px) + 2
    tw = int(2 * half_width * depth_px) + 2
    tex = np.empty((th, tw, 4), np.float32)
    tex[..., 0] = rng.standard_normal((th, tw), dtype=np.float32)
    tex[..., 1] = rng.standard_normal((th, tw), dtype=np.float32)
    for ch, cells_per_depth in ((2, 7.0), (3, 18.0)):
        cell = depth_px / cells_per_depth
        low = rng.standard_normal((int(th / cell) + 3, int(tw / cell) + 3), dtype=np.float32)
        big = cv2.resize(
            low, (int((low.shape[1]) * cell), int(low.shape[0] * cell)), interpolation=cv2.INTER_CUBIC
        )[:th, :tw]
        tex[..., ch] = big / max(1e-6, float(big.std()))
    tex.flags.writeable = False
    return tex


# --------------------------------------------------------------------------------------------
# Tissue maps and painting helpers
# --------------------------------------------------------------------------------------------
@dataclass
class _Field:
    """What an anatomy painter sees, all (D, L) float32 on the beam grid.

    z, x: tissue coordinates of each sample after motion; s1, s2: smooth random fields moving with
    the tissue (coarse / fine); zs: undisplaced depth (for things fixed to the probe).
    """

    z: np.ndarray
    x: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    zs: np.ndarray
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


def _body_wall(m: _Maps, f: _Field, thickness: float, skin: float = 0.012) -> None:
    """Skin (bright), subcutaneous fat (hypoechoic), muscle (striated) and a bright fascia line."""
    z = f.z
    fat_end = thickness * 0.5
    m.paint(_step(skin - z, 0.004), echo=2.2)
    m.paint(_band(z, skin, fat_end, 0.004), echo=0.4 * (1 + 0.3 * f.s2))
    fibres = 0.6 + 0.35 * np.cos(2 * np.pi * (z / 0.011 + 0.8 * f.s1))
    m.paint(_band(z, fat_end, thickness, 0.004), echo=0.6 * fibres)
    m.echo += 2.5 * _ridge(z - thickness, 0.004)


# --------------------------------------------------------------------------------------------
# Anatomies: params(rng) -> dict; motion(z, x, phase, p) -> tissue positions; paint(f, p) -> maps
# --------------------------------------------------------------------------------------------
def _breath(z, x, phase, p, amp=0.035):
    """Breathing: organs slide under a body wall that stays on the probe (motion ramps in with depth)."""
    ramp = np.clip((z - 0.05) / 0.25, 0.0, 1.0)
    s = math.sin(2 * math.pi * phase)
    return z - amp * s * ramp, x - 0.3 * amp * s * ramp


def _liver_params(rng: np.random.Generator) -> dict:
    vessels = []
    for _ in range(int(rng.integers(3, 7))):
        vessels.append(
            {
                "cz": rng.uniform(0.22, 0.7),
                "cx": rng.uniform(-0.5, 0.5),
                "r": rng.uniform(0.012, 0.045),
                "ecc": rng.uniform(0.7, 1.6),
                "ang": rng.uniform(-1.5, 1.5),
                "portal": rng.random() < 0.5,
                "sign": float(rng.choice([-1.0, 1.0])),
                "drift": rng.normal(0, 0.4, 2),
            }
        )
    return {
        "wall": rng.uniform(0.06, 0.1),
        "diaph": rng.uniform(0.78, 0.88),
        "curv": rng.uniform(0.2, 0.6),
        "tilt": rng.uniform(-0.1, 0.1),
        "vessels": vessels,
        "echo": rng.uniform(0.9, 1.1),
        "gb": rng.random() < 0.35,
        "gb_c": (rng.uniform(0.25, 0.4), rng.uniform(-0.4, -0.1)),
    }


def _liver_paint(f: _Field, p: dict) -> _Maps:
    m = _Maps.filled(f.z.shape, p["echo"] * (1 + 0.12 * f.s1))
    _body_wall(m, f, p["wall"])
    zd = p["diaph"] + p["curv"] * f.x**2 + p["tilt"] * f.x
    # beyond the diaphragm: air-filled lung shows only a faint mirror-image of the liver
    m.paint(_step(f.z - zd, 0.01), echo=0.35 * (1 + 0.3 * f.s2))
    m.echo += 6.0 * _ridge(f.z - zd, 0.008)
    for v in p["vessels"]:
        cz, cx = v["cz"] + v["drift"][0] * f.elevation, v["cx"] + v["drift"][1] * f.elevation
        r = _ell(f.z, f.x, cz, cx, v["r"], v["r"] * v["ecc"], v["ang"])
        lumen = _inside(r, 0.12)
        m.paint(lumen, echo=0.03, alpha=0.15, flow=v["sign"] * 0.8 * np.clip(1 - r * r, 0, 1))
        if v["portal"]:  # portal triads have echogenic fibro-fatty walls, hepatic veins do not
            m.echo += 2.5 * _ridge(r - 1.1, 0.15)
    if p["gb"]:  # gallbladder: anechoic pear with a bright wall
        r = _ell(f.z, f.x, p["gb_c"][0], p["gb_c"][1], 0.06, 0.13, 0.4)
        m.paint(_inside(r, 0.06), echo=0.02, alpha=0.1)
        m.echo += 2.0 * _ridge(r - 1.03, 0.05)
    return m


def _thyroid_params(rng: np.random.Generator) -> dict:
    return {
        "shift": rng.uniform(-0.18, 0.18),
        "lobe_r": (rng.uniform(0.12, 0.18), rng.uniform(0.13, 0.2)),
        "lobe_zx": (rng.uniform(0.29, 0.37), rng.uniform(0.26, 0.34)),
        "echo": rng.uniform(1.1, 1.4),
        "tr": rng.uniform(0.1, 0.15),
        "car": rng.uniform(0.055, 0.09),
        "car_zx": (rng.uniform(0.36, 0.46), rng.uniform(0.48, 0.6)),
    }


def _thyroid_motion(z, x, phase, p):
    # carotid pulsation shakes the gland slightly
    s = math.sin(2 * math.pi * phase)
    return z - 0.004 * s * np.clip(z / 0.3, 0, 1), x - 0.006 * s


def _thyroid_paint(f: _Field, p: dict) -> _Maps:
    z, x = f.z, f.x - p["shift"]
    m = _Maps.filled(z.shape, 0.5 * (1 + 0.2 * f.s1))
    _body_wall(m, f, 0.07, skin=0.02)
    straps = 0.45 * (0.7 + 0.3 * np.cos(2 * np.pi * z / 0.012))
    m.paint(_band(z, 0.07, 0.15) * _step(0.55 - np.abs(x), 0.02), echo=straps)
    trz, rt = 0.3 + p["tr"], p["tr"]
    for side in (-1.0, 1.0):
        (lz, lx), (cz, cx) = p["lobe_zx"], p["car_zx"]
        lobe = _inside(_ell(z, x, lz, side * lx, p["lobe_r"][0], p["lobe_r"][1]), 0.06)
        m.paint(lobe, echo=p["echo"] * (1 + 0.15 * f.s2))
        rc = _ell(z, x, cz, side * cx, p["car"], p["car"])
        m.paint(_inside(rc, 0.08), echo=0.02, alpha=0.15, flow=side * 0.9 * np.clip(1 - rc * rc, 0, 1))
        m.echo += 3.0 * _ridge(rc - 1.08, 0.08)
        rj = _ell(z, x, 0.22, side * 0.6, 0.04, 0.08)
        m.paint(_inside(rj, 0.1), echo=0.03, alpha=0.2, flow=-side * 0.4)
    m.paint(_band(z, 0.17, 0.25) * _step(0.2 - np.abs(x), 0.02), echo=p["echo"])  # isthmus
    # trachea: cartilage ring over air -> bright arc, then total reflection: shadow with reverberations
    rt_n = _ell(z, x, trz, 0.0, rt, rt)
    front = (z < trz) & (rt_n < 1.3)
    m.echo += 7.0 * _ridge(rt_n - 1.0, 0.08) * front
    air = _inside(rt_n, 0.05) + _step(z - trz, 0.01) * _step(rt - np.abs(x), 0.01)
    m.paint(np.clip(air, 0, 1), alpha=25.0)
    shadow = _step(z - (trz - rt), 0.01) * _step(0.8 * rt - np.abs(x), 0.02)
    m.post += shadow * 0.5 * np.exp(-(z - trz + rt) / 0.3) * np.cos(np.pi * (z - trz + rt) / 0.045) ** 8
    deep = _step(z - 0.68, 0.02)  # longus colli, then the vertebral body (bone: bright and opaque)
    m.paint(deep, echo=0.5 * (0.7 + 0.3 * np.cos(2 * np.pi * z / 0.015)))
    zb = 0.86 + 0.15 * x**2
    m.echo += 5.0 * _ridge(z - zb, 0.01) * (np.abs(x) < 0.35)
    m.paint(_step(z - zb, 0.01) * _step(0.35 - np.abs(x), 0.02), alpha=20.0)
    return m


def _breast_params(rng: np.random.Generator) -> dict:
    return {
        "fat_end": rng.uniform(0.2, 0.32),
        "gland_end": rng.uniform(0.52, 0.64),
        "wave": rng.uniform(0, 2 * np.pi, 3),
        "rib_x": rng.uniform(-0.45, -0.15) + np.array([0, 0.5]),
        "vz": rng.uniform(0.08, 0.16),
        "echo": rng.uniform(1.2, 1.6),
    }


def _breast_motion(z, x, phase, p):
    # the sonographer's hand: gentle probe compression, deeper layers move more
    return z - 0.01 * math.sin(2 * math.pi * phase) * z, x


def _breast_paint(f: _Field, p: dict) -> _Maps:
    z, x, w = f.z, f.x, p["wave"]
    m = _Maps.filled(z.shape, 0.35 * (1 + 0.25 * f.s2))  # fat lobules are hypoechoic
    m.paint(_band(z, 0.008, 0.024, 0.004), echo=0.8)  # dermis between two bright skin lines
    m.echo += 2.5 * (_ridge(z - 0.006, 0.003) + _ridge(z - 0.026, 0.003))
    fat_end = p["fat_end"] + 0.04 * np.sin(7 * x + w[0]) + 0.03 * f.s1
    gland_end = p["gland_end"] + 0.04 * np.sin(5 * x + w[1])
    sub = _band(z, 0.03, fat_end, 0.01)
    m.echo += sub * 2.0 * _ridge(f.s1 + 0.3 * f.s2, 0.05)  # Cooper's ligaments: thin bright curves
    gland = _band(z, fat_end, gland_end, 0.015)
    islands = _step(0.9 - f.s2, 0.2)  # fat islands inside the fibroglandular layer
    m.paint(gland * islands, echo=p["echo"] * (1 + 0.3 * f.s2))
    muscle_top = gland_end + 0.07
    fibres = 0.55 * (0.65 + 0.5 * np.cos(2 * np.pi * (z / 0.02 + 3 * x)) ** 4)
    m.paint(_band(z, muscle_top, 0.86), echo=fibres)
    m.echo += 2.0 * _ridge(z - muscle_top, 0.004)
    m.echo += 3.5 * _ridge(z - 0.9, 0.005)  # pleura between the ribs
    m.paint(_step(z - 0.905, 0.01), echo=0.15)  # lung: air, nothing beyond the pleura
    for rx in p["rib_x"]:
        rr = _ell(z, x, 0.93, rx, 0.045, 0.12)
        m.echo += 3.0 * _ridge(rr - 1.0, 0.1) * (z < 0.93)
        m.paint(_inside(rr, 0.1), echo=0.3, alpha=18.0)
    vessel = _ridge(z - p["vz"] - 0.03 * np.sin(4 * x + w[2]), 0.008)
    m.paint(vessel * (np.abs(x) < 0.4), echo=0.04, alpha=0.2, flow=0.6)
    return m


def _fetal_params(rng: np.random.Generator) -> dict:
    ang = rng.uniform(-0.6, 0.6)
    hz, hx = rng.uniform(0.4, 0.62), rng.uniform(-0.25, 0.25)
    rz, rx = rng.uniform(0.15, 0.2), rng.uniform(0.19, 0.25)
    bdir = rng.choice([-1.0, 1.0])
    return {
        "head": (hz, hx, rz, rx, ang),
        "body": (hz + 0.12, hx + bdir * (rx + 0.2), 0.17, 0.2),
        "anterior": rng.random() < 0.5,
        "pl_x": rng.uniform(-0.3, 0.3),
        "cord": [(rng.uniform(0.25, 0.75), rng.uniform(-0.5, 0.5)) for _ in range(3)],
        "wall": rng.uniform(0.06, 0.09),
    }


def _fetal_motion(z, x, phase, p):
    hz, hx = p["head"][:2]
    w = np.exp(-((z - hz) ** 2 + (x - hx) ** 2) / 0.12)  # the fetus moves, the uterus does not
    s, c = math.sin(2 * math.pi * phase), math.cos(2 * math.pi * phase)
    return z - 0.012 * c * w, x - 0.02 * s * w


def _fetal_paint(f: _Field, p: dict) -> _Maps:
    z, x = f.z, f.x
    m = _Maps.filled(z.shape, 0.02)  # amniotic fluid: anechoic and barely attenuating
    m.alpha[:] = 0.1
    _body_wall(m, f, p["wall"])
    zu, zp = p["wall"] + 0.1 * x**2, 0.88 - 0.12 * x**2  # uterine walls
    m.paint(_band(z, p["wall"], zu + 0.05, 0.01), echo=0.8 * (1 + 0.2 * f.s2), alpha=1.0)
    m.paint(_step(z - zp, 0.01), echo=0.8 * (1 + 0.2 * f.s2), alpha=1.0)
    thick = 0.14 * np.clip(1 - ((x - p["pl_x"]) / 0.35) ** 2, 0, 1)  # placenta: a thick lens on one wall
    if p["anterior"]:
        pl = _band(z, zu + 0.04, zu + 0.05 + thick, 0.015)
    else:
        pl = _band(z, zp - thick, zp + 0.01, 0.015)
    m.paint(pl, echo=1.3 * (1 + 0.25 * f.s2), alpha=1.0)
    bz, bx, brz, brx = p["body"]
    rb = _ell(z, x, bz, bx, brz, brx)
    m.paint(_inside(rb, 0.05), echo=0.8 * (1 + 0.2 * f.s1), alpha=1.0)
    m.echo += 4.0 * _ridge(rb - 0.55, 0.05) * (np.cos(np.pi * (x - bx) / 0.02) ** 2) * (z > bz)  # spine
    m.paint(_inside(_ell(z, x, bz - 0.03, bx, 0.04, 0.05), 0.1), echo=0.03, alpha=0.2)  # stomach
    hz, hx, rz, rx, ang = p["head"]
    rh = _ell(z, x, hz, hx, rz, rx, ang)
    m.paint(_inside(rh, 0.04), echo=0.22 * (1 + 0.3 * f.s1), alpha=0.6)  # brain
    m.echo += 7.0 * _ridge(rh - 1.0, 0.045)  # skull
    m.alpha += 2.0 * _ridge(rh - 1.0, 0.045)  # bone attenuates: the far hemisphere is darker
    ca, sa = math.cos(ang), math.sin(ang)
    # midline echo (falx) along the long axis, plus the two thalami
    mid = _seg_dist(
        z, x, (hz - 0.85 * rx * sa, hx - 0.85 * rx * ca), (hz + 0.85 * rx * sa, hx + 0.85 * rx * ca)
    )
    m.echo += 2.5 * _ridge(mid, 0.006)
    for s in (-1.0, 1.0):
        m.paint(_inside(_ell(z, x, hz + s * 0.05 * ca, hx - s * 0.05 * sa, 0.035, 0.05, ang), 0.2), echo=0.1)
    for cz, cx in p["cord"]:
        for k, s in enumerate((-1.0, 1.0)):  # umbilical cord: vessels in Wharton's jelly
            rc = _ell(z, x, cz + 0.012 * k, cx + 0.02 * s, 0.014, 0.014)
            m.paint(_inside(rc, 0.2), echo=0.05, flow=s * 0.8)
            m.echo += 1.2 * _ridge(rc - 1.2, 0.25)
    return m


_CHAMBERS = {  # apical four-chamber view: (cz, cx, rz, rx, angle, contraction)
    "lv": (0.40, 0.13, 0.24, 0.105, -0.15, 0.4),
    "rv": (0.42, -0.13, 0.21, 0.085, 0.2, 0.28),
    "la": (0.77, 0.13, 0.11, 0.10, 0.0, -0.15),
    "ra": (0.77, -0.12, 0.11, 0.095, 0.0, -0.12),
}


def _cardiac_params(rng: np.random.Generator) -> dict:
    return {
        "shift": rng.uniform(-0.08, 0.08),
        "size": rng.uniform(0.9, 1.1),
        "squeeze": rng.uniform(0.7, 1.2),
        "tilt": rng.uniform(-0.2, 0.2),
    }


def _rotate_about(z, x, cz: float, cx: float, a: float):
    """Rotate points (z, x) by ``a`` radians about (cz, cx)."""
    c, s = math.cos(a), math.sin(a)
    dz, dx = z - cz, x - cx
    return cz + c * dz - s * dx, cx + s * dz + c * dx


def _chambers(p: dict):
    s, dx = p["size"], p["shift"]
    for name, (cz, cx, rz, rx, ang, k) in _CHAMBERS.items():
        yield name, 0.1 + (cz - 0.1) * s, cx * s + dx, rz * s, rx * s, ang, k * p["squeeze"]


def _systole(phase: float) -> float:
    """Ventricular contraction 0..1 over one heart cycle (phase 0 = end-diastole)."""
    return 0.5 - 0.5 * math.cos(2 * math.pi * phase)


def _cardiac_motion(z, x, phase, p):
    # Inverse warp: a screen point shows tissue from further out when a chamber contracts, so the
    # walls move in. Speckle moves with them because it is sampled at the same tissue positions.
    s = _systole(phase)
    hz, hx = _rotate_about(z, x, 0.1, p["shift"], p["tilt"])  # heart frame: the heart's axis is tilted
    pz, px = hz.copy(), hx.copy()
    for _, cz, cx, rz, rx, ang, k in _chambers(p):
        w = np.exp(-(_ell(hz, hx, cz, cx, rz, rx, ang) ** 2) / 2.5)
        pz += k * s * w * (hz - cz)
        px += k * s * w * (hx - cx)
    pz, px = _rotate_about(pz - 0.012 * s, px, 0.1, p["shift"], -p["tilt"])
    return pz, px


def _cardiac_paint(f: _Field, p: dict) -> _Maps:
    z, x = _rotate_about(f.z, f.x, 0.1, p["shift"], p["tilt"])
    m = _Maps.filled(z.shape, 0.3 * (1 + 0.4 * f.s1))
    m.echo += 1.5 * np.exp(-f.z / 0.04)  # chest-wall clutter right under the phased array
    s, dx = p["size"], p["shift"]
    heart = _ell(z, x, 0.55 + 0.02 * s, dx, 0.47 * s, 0.33 * s)
    m.paint(_inside(heart, 0.05), echo=0.9 * (1 + 0.2 * f.s2))
    m.echo += 3.5 * _ridge(heart - 1.02, 0.03)  # pericardium
    sys_ = _systole(f.phase)
    for name, cz, cx, rz, rx, ang, _ in _chambers(p):
        r = _ell(z, x, cz, cx, rz, rx, ang)
        sign = 1.0 if (f.phase % 1.0) > 0.5 else -1.0  # diastolic inflow towards the apex/probe
        if name in ("la", "ra"):
            sign = -sign
        m.paint(
            _inside(r, 0.06),
            echo=0.04 * (1 + 0.5 * f.s2),
            alpha=0.2,
            flow=sign * (0.5 + 0.4 * sys_) * np.clip(1 - r * r, 0, 1),
        )
    # AV valves: leaflets hinge at the AV junction and swing open in diastole
    for _, cz, cx, rz, rx, ang, _ in list(_chambers(p))[:2]:
        hz = cz + 0.95 * rz
        opening = 0.2 + 1.0 * (1 - sys_)
        for side in (-1.0, 1.0):
            hinge = (hz, cx + side * 0.8 * rx)
            tip = (
                hz - 0.09 * s * math.cos(opening * 0.8),
                hinge[1] - side * 0.09 * s * math.sin(0.5 + opening),
            )
            m.echo += 3.0 * _ridge(_seg_dist(z, x, hinge, tip), 0.007)
    return m


def _kidney_params(rng: np.random.Generator) -> dict:
    return {
        "c": (rng.uniform(0.5, 0.6), rng.uniform(-0.1, 0.1)),
        "r": (rng.uniform(0.17, 0.21), rng.uniform(0.32, 0.4)),
        "ang": rng.uniform(-0.25, 0.25),
        "wall": rng.uniform(0.06, 0.09),
        "n_pyr": int(rng.integers(6, 9)),
        "pyr_rot": rng.uniform(0, 0.5),
    }


def _kidney_paint(f: _Field, p: dict) -> _Maps:
    z, x = f.z, f.x
    m = _Maps.filled(z.shape, 1.0 * (1 + 0.12 * f.s1))  # liver as acoustic window
    _body_wall(m, f, p["wall"])
    (cz, cx), (rz, rx), ang = p["c"], p["r"], p["ang"]
    m.paint(_step(z - (cz + 0.85 * rz + 0.12), 0.03), echo=0.55 * (0.7 + 0.4 * np.cos(2 * np.pi * z / 0.014)))
    fat = _ell(z, x, cz, cx, rz + 0.035, rx + 0.035, ang)
    m.paint(_inside(fat, 0.06), echo=1.7 * (1 + 0.3 * f.s2))  # perirenal fat: echogenic
    r = _ell(z, x, cz, cx, rz, rx, ang)
    m.paint(_inside(r, 0.03), echo=0.65 * (1 + 0.15 * f.s1))  # cortex: a little darker than liver
    m.echo += 2.0 * _ridge(r - 1.0, 0.03)  # capsule
    ca, sa = math.cos(ang), math.sin(ang)
    for k in range(p["n_pyr"]):  # medullary pyramids: dark, arranged around the sinus
        t = p["pyr_rot"] + 2 * np.pi * k / p["n_pyr"]
        lz, lx = 0.62 * rz * math.sin(t), 0.62 * rx * math.cos(t)
        pz, px = cz + ca * lz + sa * lx, cx - sa * lz + ca * lx
        m.paint(_inside(_ell(z, x, pz, px, 0.045, 0.035, -t), 0.2), echo=0.22)
    sinus = _ell(z, x, cz, cx, 0.42 * rz, 0.55 * rx, ang)
    m.paint(_inside(sinus, 0.15), echo=2.0 * (1 + 0.35 * f.s2))  # renal sinus fat
    vessel = _ell(z, x, cz, cx + 0.15 * rx, 0.02, 0.2 * rx, ang)
    m.paint(_inside(vessel, 0.15), echo=0.04, alpha=0.2, flow=0.7)
    return m


@dataclass(frozen=True)
class _Anatomy:
    params: Callable[[np.random.Generator], dict]
    paint: Callable[[_Field, dict], _Maps]
    motion: Callable[..., tuple[np.ndarray, np.ndarray]]


_ANATOMY: dict[str, _Anatomy] = {
    "liver": _Anatomy(_liver_params, _liver_paint, _breath),
    "thyroid": _Anatomy(_thyroid_params, _thyroid_paint, _thyroid_motion),
    "breast": _Anatomy(_breast_params, _breast_paint, _breast_motion),
    "fetal": _Anatomy(_fetal_params, _fetal_paint, _fetal_motion),
    "cardiac": _Anatomy(_cardiac_params, _cardiac_paint, _cardiac_motion),
    "kidney": _Anatomy(_kidney_params, _kidney_paint, _breath),
}


# --------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------
@dataclass
class Lesion:
    """A focal lesion in tissue coordinates.

    kind: "cyst" (anechoic fluid, thin sharp wall, low attenuation -> posterior enhancement) or
        "solid" (hypoechoic, lobulated/irregular margin, high attenuation -> posterior shadowing).
    centre: (z, x) tissue coordinates: z = depth as a fraction of the imaging depth (0..1),
        x = lateral offset from the centre line in the same unit (about -0.6..0.6 is on screen).
    radii: (rz, rx) semi-axes in the same unit; angle: rotation in radians.
    echo / attenuation: override the kind's backscatter / attenuation (None = kind default).
    irregularity: margin lobulation amplitude for solids (0 = smooth ellipse); seed: margin shape.
    """

    kind: str
    centre: tuple[float, float] = (0.5, 0.0)
    radii: tuple[float, float] = (0.08, 0.1)
    angle: float = 0.0
    echo: float | None = None
    attenuation: float | None = None
    irregularity: float = 0.3
    seed: int = 0


def _paint_lesion(m: _Maps, f: _Field, les: Lesion) -> None:
    """Paint ``les`` into ``m``. It is an ellipsoid: off-plane (``elevation``) the cut shrinks."""
    if les.kind not in ("cyst", "solid"):
        raise ValueError(f"lesion kind must be 'cyst' or 'solid', got {les.kind!r}")
    r_elev = 0.5 * (les.radii[0] + les.radii[1])
    cut2 = 1.0 - (f.elevation / r_elev) ** 2
    if cut2 <= 0.02:
        return
    k = math.sqrt(cut2)
    cz, cx = les.centre
    rz, rx = les.radii[0] * k, les.radii[1] * k
    r = _ell(f.z, f.x, cz, cx, rz, rx, les.angle)
    if les.kind == "cyst":
        # Fluid: almost no scatterers (anechoic) and ~7x less attenuation than tissue, so the TGC
        # (set for tissue) over-amplifies whatever lies behind: posterior acoustic enhancement.
        m.paint(
            _inside(r, 0.05),
            echo=0.02 if les.echo is None else les.echo,
            alpha=0.15 if les.attenuation is None else les.attenuation,
            flow=0.0,
        )
        # the wall is a specular reflector, brightest where the beam hits it head-on (top/bottom)
        dz = (f.z - cz) / max(rz, 1e-6)
        m.echo += 1.8 * _ridge(r - 1.03, 0.05) * np.clip(dz * dz / (r * r + 1e-6), 0.2, 1.0)
        return
    # Solid: a lobulated margin (radius modulated by a few random angular harmonics), heterogeneous
    # hypoechoic interior, and dense stroma that attenuates strongly: posterior acoustic shadowing.
    rng = np.random.default_rng([les.seed, 0x501])
    dz, dx = f.z - cz, f.x - cx
    ca, sa = math.cos(les.angle), math.sin(les.angle)
    th = np.arctan2(sa * dz + ca * dx, ca * dz - sa * dx)
    lob = np.zeros_like(r)
    for h in (3, 4, 5, 7, 11):
        lob += rng.uniform(0.3, 1.0) / math.sqrt(h) * np.cos(h * th + rng.uniform(0, 2 * np.pi))
    r_eff = r / (1.0 + les.irregularity * 0.35 * lob)
    inside = _inside(r_eff, 0.15)
    echo = 0.3 if les.echo is None else les.echo
    m.paint(inside, echo=echo * (1 + 0.4 * f.s2), alpha=3.0 if les.attenuation is None else les.attenuation)
    m.paint(inside, flow=0.5 * np.clip(f.s2, -1, 1) * (np.abs(f.s2) > 1.2))  # internal vascularity


# --------------------------------------------------------------------------------------------
# Signal chain
# --------------------------------------------------------------------------------------------
def _beamform(
    m: _Maps,
    nre: np.ndarray,
    nim: np.ndarray,
    path: np.ndarray,
    kind: str,
    gain_db: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Echo maps + scatterers -> (D, L) uint8 log-compressed B-mode lines."""
    # Scatterers scaled by backscatter, convolved with the PSF in beam coordinates, then envelope
    # detection: |complex Gaussian| is Rayleigh, so the speckle multiplies the local echo level.
    # The lateral PSF (beam width) is wider than the axial one (pulse length): speckle grains are
    # elongated across the beam and, for diverging beams, grow with depth.
    sig_lat = 1.6 if kind != "linear" else 2.0
    sig_ax = 1.2
    re = cv2.GaussianBlur(m.echo * nre, (0, 0), sigmaX=sig_lat, sigmaY=sig_ax)
    im = cv2.GaussianBlur(m.echo * nim, (0, 0), sigmaX=sig_lat, sigmaY=sig_ax)
    norm = 1.0 / (math.sqrt(math.pi / 2) * _psf_rms(sig_lat, sig_ax))
    env = np.sqrt(re * re + im * im) * norm
    # Attenuation accumulates along each beam (axis 0); TGC compensates the soft-tissue average.
    step = float(path[1, 0] - path[0, 0]) if path.shape[0] > 1 else 1.0
    att = np.exp(-_K_ATT * step * np.cumsum(m.alpha, axis=0, dtype=np.float32))
    tgc = np.exp(_K_ATT * _TGC_FRACTION * path)
    near = 1.0 + 1.6 * np.exp(-path / 0.03)  # bright near field (main-bang / reverberation clutter)
    amp = env * (att * tgc * near) + m.post * env
    # electronic noise: fresh every frame, amplified by the TGC (visible in deep anechoic regions)
    amp += (0.002 * tgc) * rng.rayleigh(1.0, size=amp.shape).astype(np.float32)
    db = 20.0 * np.log10(amp + 1e-6)
    return np.clip((db + _OFFSET_DB + gain_db) * (255.0 / _DYN_RANGE_DB), 0, 255).astype(np.float32)


@lru_cache(maxsize=8)
def _psf_rms(sig_lat: float, sig_ax: float) -> float:
    """RMS gain of the separable Gaussian PSF on white noise: sqrt(sum of squared taps)."""
    kl = cv2.getGaussianKernel(2 * math.ceil(3 * sig_lat) + 1, sig_lat)
    ka = cv2.getGaussianKernel(2 * math.ceil(3 * sig_ax) + 1, sig_ax)
    return float(math.sqrt(float((kl**2).sum()) * float((ka**2).sum())))


def _scan_convert(lines: np.ndarray, grid: _BeamGrid) -> np.ndarray:
    """(D, L) float beam data -> (H, W) float32 screen image, 0 outside the footprint."""
    out = cv2.remap(
        lines, grid.map_x, grid.map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    out[~grid.mask] = 0
    return out


# --------------------------------------------------------------------------------------------
# Annotations burned into the pixels
# --------------------------------------------------------------------------------------------
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _draw_banner(img: np.ndarray, g: ProbeGeometry, text: str, right_text: str) -> None:
    """White text in rows [0, banner_rows): ``text`` on the left, date/time on the right."""
    colour = (255, 255, 255) if img.ndim == 3 else 255
    scale = g.banner_rows / 55.0
    for _ in range(8):  # shrink until both strings fit on one line
        (wl, hl), bl = cv2.getTextSize(text, _FONT, scale, 1)
        (wr, _hr), br = cv2.getTextSize(right_text, _FONT, scale, 1)
        if wl + wr + 0.05 * g.width < g.width:
            break
        scale *= 0.85
    base = round(min(g.banner_rows - 2 - max(bl, br), 0.5 * (g.banner_rows + hl)))
    cv2.putText(img, text, (int(0.012 * g.width), base), _FONT, scale, colour, 1, cv2.LINE_AA)
    cv2.putText(
        img, right_text, (g.width - wr - int(0.012 * g.width), base), _FONT, scale, colour, 1, cv2.LINE_AA
    )
    img[g.banner_rows : g.top] = 0  # descenders must not leak into the black gap


def _draw_scale(img: np.ndarray, g: ProbeGeometry) -> None:
    """Depth ticks every cm (labelled every 5, or every cm for shallow probes) and a grey bar."""
    colour = (220, 220, 220) if img.ndim == 3 else 220
    xt = g.width - round(0.1 * g.width)
    step_lab = 1 if g.depth_cm <= 6 else 5
    fs = max(0.25, g.height / 1400.0)
    for k in range(int(g.depth_cm) + 1):
        y = round(g.top + k / g.depth_cm * g.depth_px)
        if y >= g.bottom:
            break
        major = k % step_lab == 0
        cv2.line(img, (xt, y), (xt + (7 if major else 3), y), colour, 1)
        if major and k:
            cv2.putText(img, str(k), (xt + 9, y + 4), _FONT, fs, colour, 1, cv2.LINE_AA)
    x0, x1 = g.width - round(0.035 * g.width), g.width - round(0.015 * g.width)
    y0, y1 = g.top, g.top + int(0.3 * g.depth_px)
    ramp = np.linspace(255, 0, y1 - y0).astype(np.uint8)[:, None]
    if img.ndim == 3:
        img[y0:y1, x0:x1] = ramp[..., None]
    else:
        img[y0:y1, x0:x1] = ramp


def _ecg_wave(t: np.ndarray) -> np.ndarray:
    """PQRST complex, ``t`` in heart cycles, amplitude ~1. The R wave sits at whole cycles: it marks
    end-diastole, which is phase 0 of the heart motion."""
    waves = (
        (-0.22, 0.12, 0.03),
        (-0.03, -0.12, 0.01),
        (0.0, 1.0, 0.012),
        (0.03, -0.25, 0.012),
        (0.28, 0.3, 0.05),
    )
    out = np.zeros_like(t)
    for c, a, w in waves:
        d = np.mod(t - c + 0.5, 1.0) - 0.5  # periodic distance to the wave's centre
        out += a * np.exp(-((d / w) ** 2))
    return out


def _draw_ecg(img: np.ndarray, g: ProbeGeometry, phase: float) -> None:
    """Two-beat ECG polyline in the strip under the footprint, with a cursor at the current phase."""
    colour = (60, 230, 60) if img.ndim == 3 else 200
    x0, x1 = int(0.2 * g.width), int(0.9 * g.width)
    strip = g.height - g.bottom
    base, amp = g.bottom + 0.62 * strip, 0.32 * strip
    xs = np.arange(x0, x1, dtype=np.float64)
    ys = base - amp * _ecg_wave(2.0 * (xs - x0) / (x1 - x0))
    pts = np.stack([xs, ys], 1).round().astype(np.int32)[:, None, :]
    cv2.polylines(img, [pts], False, colour, 1, cv2.LINE_AA)
    cx = int(x0 + (1.0 + phase % 1.0) / 2.0 * (x1 - x0 - 1))
    cv2.circle(
        img, (cx, round(ys[min(cx - x0, len(ys) - 1)])), 2, (255, 255, 255) if img.ndim == 3 else 255, -1
    )


def _draw_calipers(img: np.ndarray, g: ProbeGeometry, a: tuple[float, float], b: tuple[float, float]) -> None:
    """'+' marks at tissue points a and b, a dotted line between them, and a 'D1 x.xx cm' readout."""
    colour = (255, 255, 0) if img.ndim == 3 else 255
    (ya, xa), (yb, xb) = g.tissue_to_pixel(*a), g.tissue_to_pixel(*b)
    arm = max(3, round(0.009 * g.width))
    for y, x in ((ya, xa), (yb, xb)):
        cv2.line(img, (x - arm, y), (x + arm, y), colour, 1)
        cv2.line(img, (x, y - arm), (x, y + arm), colour, 1)
    n = int(math.hypot(yb - ya, xb - xa) / 5)
    for t in np.linspace(0, 1, max(n, 2))[1:-1]:
        y, x = round(ya + t * (yb - ya)), round(xa + t * (xb - xa))
        cv2.line(img, (x, y), (x, y), colour, 1)  # a one-pixel dot, clipped at the border
    cm = math.hypot(a[0] - b[0], a[1] - b[1]) * g.depth_cm
    cv2.putText(
        img,
        f"D1 {cm:.2f}cm",
        (int(0.012 * g.width), g.height - max(3, round(0.02 * g.height))),
        _FONT,
        max(0.25, g.height / 1300.0),
        colour,
        1,
        cv2.LINE_AA,
    )


def _doppler(
    gray: np.ndarray, flow_lines: np.ndarray, grid: _BeamGrid, g: ProbeGeometry, rng: np.random.Generator
) -> np.ndarray:
    """(H, W) gray + (D, L) flow -> (H, W, 3) RGB with a colour box: red = towards the probe,
    blue = away, brighter/yellower = faster; plus a colour scale bar on the left."""
    n_d, n_l = flow_lines.shape
    mag = cv2.GaussianBlur(np.abs(flow_lines), (0, 0), 6)
    mag[: n_d // 8] = 0  # never centre the box in the near field
    iy, ix = np.unravel_index(int(np.argmax(mag)), mag.shape)
    hy, hx = int(0.15 * n_d), int(0.17 * n_l)
    y0, y1 = max(0, iy - hy), min(n_d - 1, iy + hy)
    x0, x1 = max(0, ix - hx), min(n_l - 1, ix + hx)
    box = (grid.map_y >= y0) & (grid.map_y <= y1) & (grid.map_x >= x0) & (grid.map_x <= x1) & grid.mask
    f = cv2.remap(flow_lines, grid.map_x, grid.map_y, cv2.INTER_LINEAR, borderValue=0)
    f *= 0.7 + 0.6 * rng.random(f.shape, dtype=np.float32)  # colour noise (velocity estimate spread)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    colour = box & (np.abs(f) > 0.12)
    v = np.clip(np.abs(f), 0, 1)
    hi = np.clip((v - 0.7) * 3.0, 0, 1)
    pos, neg = colour & (f > 0), colour & (f < 0)
    rgb[pos] = np.stack([110 + 145 * v, 230 * hi, np.zeros_like(v)], -1)[pos].astype(np.uint8)
    rgb[neg] = np.stack([np.zeros_like(v), 230 * hi, 110 + 145 * v], -1)[neg].astype(np.uint8)
    outline = box.astype(np.uint8) - cv2.erode(box.astype(np.uint8), np.ones((3, 3), np.uint8))
    rgb[outline.astype(bool)] = 190
    bx0, bx1 = round(0.012 * g.width), round(0.03 * g.width)
    by0, by1 = g.top, g.top + int(0.3 * g.depth_px)
    ramp = np.linspace(1, -1, by1 - by0)[:, None]
    bar = np.zeros((by1 - by0, 1, 3), np.uint8)
    bar[..., 0] = np.where(ramp > 0, 110 + 145 * ramp, 0)
    bar[..., 2] = np.where(ramp < 0, 110 - 145 * ramp, 0)
    rgb[by0:by1, bx0:bx1] = bar
    return rgb


# --------------------------------------------------------------------------------------------
# Public renderer
# --------------------------------------------------------------------------------------------
def _scene_rng(scene_seed: int, anatomy: str) -> np.random.Generator:
    return np.random.default_rng([scene_seed, ANATOMIES.index(anatomy)])


def _date_text(scene_seed: int) -> str:
    r = np.random.default_rng([scene_seed, 0xDA7E])
    y, mo, d = int(r.integers(2016, 2025)), int(r.integers(1, 13)), int(r.integers(1, 29))
    h, mi, s = int(r.integers(7, 19)), int(r.integers(0, 60)), int(r.integers(0, 60))
    return f"{y:04d}/{mo:02d}/{d:02d} {h:02d}:{mi:02d}:{s:02d}"


def render_frame(
    rng: np.random.Generator,
    *,
    height: int = 480,
    width: int = 640,
    probe: str = "sector",
    anatomy: str = "liver",
    lesion: Lesion | None = None,
    phase: float = 0.0,
    banner: str | None = None,
    calipers: bool = False,
    doppler: bool = False,
    ecg: bool = False,
    scene_seed: int | None = None,
    elevation: float = 0.0,
    pan: float = 0.0,
) -> np.ndarray:
    """Render one scanner-like B-mode frame.

    Returns (height, width) uint8 gray, or (height, width, 3) uint8 RGB when ``doppler``.
    ``scene_seed`` fixes the anatomy layout and the speckle (drawn from ``rng`` when None); frames of
    one scene at nearby ``phase`` values (1.0 = one breathing/heart cycle) are near-duplicates.
    ``elevation`` moves the imaging plane out of plane (volume sweeps: vessels drift, lesions shrink
    and vanish); ``pan`` slides the probe sideways (tissue units). ``rng`` only feeds per-frame
    electronic noise and colour noise.
    """
    if anatomy not in _ANATOMY:
        raise ValueError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    if scene_seed is None:
        scene_seed = int(rng.integers(0, 2**31 - 1))
    g = probe_geometry(probe, height, width)
    grid = _beam_grid(g)
    ana = _ANATOMY[anatomy]
    params = ana.params(_scene_rng(scene_seed, anatomy))
    # Depth setting: the sonographer's zoom scales the anatomy on screen (not the speckle, whose
    # size is set by the pulse and beam). Anatomy lives in zoomed coordinates; speckle and lesions
    # live in screen-scale tissue coordinates.
    zoom = float(np.random.default_rng([scene_seed, 0x200]).uniform(0.85, 1.2))
    az, ax = ana.motion(grid.z * zoom, (grid.x - pan) * zoom, phase, params)
    pz, px = az / zoom, ax / zoom
    half_w = width / 2.0 / g.depth_px + _TEX_MARGIN_X
    tex = _scene_texture(scene_seed, int(g.depth_px), round(half_w, 3))
    d = g.depth_px
    samp = cv2.remap(
        tex,
        ((px + half_w) * d).astype(np.float32),
        ((pz + _TEX_MARGIN_Z) * d).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    f = _Field(
        az.astype(np.float32), ax.astype(np.float32), samp[..., 2], samp[..., 3], grid.z, phase, elevation
    )
    maps = ana.paint(f, params)
    if lesion is not None:
        f.z, f.x = pz.astype(np.float32), px.astype(np.float32)
        _paint_lesion(maps, f, lesion)
    gain_db = float(np.random.default_rng([scene_seed, 0x6A1]).uniform(-2.5, 2.5))
    lines = _beamform(maps, samp[..., 0], samp[..., 1], grid.path, g.kind, gain_db, rng)
    img = np.rint(_scan_convert(lines, grid)).astype(np.uint8)
    if doppler:
        img = _doppler(img, maps.flow, grid, g, rng)
    g_shown = replace(g, depth_cm=round(g.depth_cm * zoom, 1))  # what the ticks and calipers say
    if banner is not None:
        _draw_banner(img, g, banner, _date_text(scene_seed))
    _draw_scale(img, g_shown)
    if ecg:
        _draw_ecg(img, g, phase)
    if calipers:
        _draw_calipers(img, g_shown, *_caliper_points(lesion, scene_seed))
    return img


def _caliper_points(
    lesion: Lesion | None, scene_seed: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Endpoints across the lesion's lateral axis, or a random measurement when there is none."""
    if lesion is not None:
        (cz, cx), rx = lesion.centre, lesion.radii[1]
        ca, sa = math.cos(lesion.angle), math.sin(lesion.angle)
        return (cz - rx * sa, cx - rx * ca), (cz + rx * sa, cx + rx * ca)
    r = np.random.default_rng([scene_seed, 0xCA1])
    a = (float(r.uniform(0.3, 0.7)), float(r.uniform(-0.3, 0.0)))
    return a, (a[0] + float(r.uniform(-0.15, 0.15)), a[1] + float(r.uniform(0.1, 0.3)))


# --------------------------------------------------------------------------------------------
# Writers: demo corpus
# --------------------------------------------------------------------------------------------
@dataclass
class _Patient:
    """A synthetic patient. ``name`` appears in folder names, banners and DICOM tags on purpose:
    it is the PHI the sharder must never carry into shards."""

    name: str  # DICOM PN, e.g. "DEMO^PATIENT_001"
    pid: str  # PatientID
    seed: int
    institution: str
    study_date: str  # YYYYMMDD

    @property
    def study_uid(self) -> str:
        return _uid(self.seed, "study", self.pid)


_INSTITUTIONS = ("ST ELSEWHERE HOSPITAL", "GENERAL INFIRMARY", "CITY WOMENS CLINIC", "NORTH IMAGING CTR")


def _patients(patient_name: str, seed: int):
    """Endless stream of patients DEMO^PATIENT_001, _002, ... (deterministic from ``seed``)."""
    i = 0
    while True:
        i += 1
        r = np.random.default_rng([seed, 0xBA7, i])
        date = f"{int(r.integers(2016, 2025)):04d}{int(r.integers(1, 13)):02d}{int(r.integers(1, 29)):02d}"
        yield _Patient(
            f"{patient_name}_{i:03d}",
            f"PID{seed % 100:02d}{i:04d}",
            seed * 1000 + i,
            _INSTITUTIONS[int(r.integers(len(_INSTITUTIONS)))],
            date,
        )


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid  # optional dependency: only the DICOM writers need it

    return generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def _n(count: int, scale: float) -> int:
    """File count scaled by ``scale`` (at least one)."""
    return max(1, round(count * scale))


def _imwrite(path: Path, img: np.ndarray, params: tuple[int, ...] = ()) -> None:
    """Write an RGB or gray (8/16-bit) image with OpenCV (which wants BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    if not cv2.imwrite(str(path), arr, list(params)):
        raise OSError(f"could not write {path}")


def _random_lesion(
    rng: np.random.Generator,
    z_range: tuple[float, float],
    x_range=(-0.28, 0.28),
    small_p: float = 0.3,
    kind: str | None = None,
    size_scale: float = 1.0,
    conspicuity: float = 0.0,
) -> Lesion:
    """A lesion with varied kind, size, shape, position and contrast.

    size_scale multiplies the radius. conspicuity in [0, 1] narrows the contrast ranges towards
    the textbook end (0: simple-to-complicated cysts, weakly-to-strongly shadowing solids; 1:
    anechoic, strongly enhancing cysts and hypoechoic, strongly shadowing solids). The random
    draws are the same for any value of both, so defaults reproduce the original lesions."""
    kind = kind or ("cyst" if rng.random() < 0.5 else "solid")
    r = rng.uniform(0.02, 0.035) if rng.random() < small_p else rng.uniform(0.035, 0.1)
    r *= size_scale
    aspect = rng.uniform(0.7, 1.3)
    c = float(np.clip(conspicuity, 0.0, 1.0))
    if kind == "cyst":  # simple (anechoic) to complicated (internal echoes) cysts
        echo, att = float(rng.uniform(0.0, 0.25 - 0.2 * c)), float(rng.uniform(0.08, 0.6 - 0.4 * c))
    else:  # weakly to strongly shadowing solids
        echo, att = float(rng.uniform(0.15, 0.6 - 0.3 * c)), float(rng.uniform(1.3 + 1.2 * c, 4.0))
    return Lesion(
        kind,
        (float(rng.uniform(*z_range)), float(rng.uniform(*x_range))),
        (float(r * aspect), float(r / aspect)),
        float(rng.uniform(-0.6, 0.6)),
        echo,
        att,
        float(rng.uniform(0.1, 0.8)),
        int(rng.integers(1 << 30)),
    )


def _bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _write_breast(root: Path, seed: int, scale: float, pats) -> dict:
    """PNG stills in per-patient folders: mostly 8-bit gray, some 16-bit, some RGB Doppler."""
    files, k, bit16, rgb = 0, 0, 0, 0
    n_pat = _n(6, scale)
    for _ in range(n_pat):
        pat = next(pats)
        for j in range(5):
            k += 1
            rng = np.random.default_rng([seed, 1, k])
            h, w = ((480, 640), (600, 800), (360, 480))[k % 3]
            lesion = _random_lesion(rng, (0.25, 0.5)) if rng.random() < 0.5 else None
            doppler = k % 9 == 5
            img = render_frame(
                rng,
                height=h,
                width=w,
                probe="linear",
                anatomy="breast",
                lesion=lesion,
                phase=float(rng.random()),
                banner=f"{pat.name}  {pat.institution}  L12-5 BREAST",
                calipers=k % 3 == 0,
                doppler=doppler,
                scene_seed=pat.seed * 10 + j,
            )
            path = root / pat.name / f"img_{j + 1:04d}.png"
            if doppler:
                rgb += 1
            elif k % 7 == 3:  # 16-bit PNG, full range
                img, bit16 = img.astype(np.uint16) * 257, bit16 + 1
            elif k % 7 == 6:  # 12-bit data in a 16-bit PNG, as some exporters write it
                img, bit16 = img.astype(np.uint16) * 16, bit16 + 1
            _imwrite(path, img)
            files += 1
    return {
        "files": files,
        "frames": files,
        "anatomy": "breast",
        "patients": n_pat,
        "png16": bit16,
        "rgb": rgb,
    }


def _write_thyroid(root: Path, seed: int, scale: float, pats) -> dict:
    """JPEG stills; a few also saved as PNG (same pixels: near-duplicates), one BMP, one TIFF."""
    files, pairs = 0, []
    n_pat = _n(3, scale)
    pat = None
    for p in range(n_pat):
        pat = next(pats)
        for j in range(4):
            rng = np.random.default_rng([seed, 2, p, j])
            lesion = None
            if rng.random() < 0.4:  # thyroid nodule inside a lobe
                lesion = _random_lesion(rng, (0.28, 0.38), x_range=(0.22, 0.36))
                lesion.centre = (lesion.centre[0], lesion.centre[1] * float(rng.choice([-1, 1])))
            img = render_frame(
                rng,
                height=480,
                width=640,
                probe="linear",
                anatomy="thyroid",
                lesion=lesion,
                phase=float(rng.random()),
                banner=f"{pat.institution}  THYROID  {pat.pid}",
                calipers=lesion is not None,
                scene_seed=pat.seed * 10 + j,
            )
            jpg = root / pat.name / f"thy_{j + 1:02d}.jpg"
            _imwrite(jpg, img, (cv2.IMWRITE_JPEG_QUALITY, 85 + 3 * j))
            files += 1
            if j == 0:  # the same frame exported twice, lossless and lossy
                _imwrite(jpg.with_suffix(".png"), img)
                files += 1
                pairs.append([str(jpg.relative_to(root)), str(jpg.with_suffix(".png").relative_to(root))])
    for ext in (".bmp", ".tiff"):
        rng = np.random.default_rng([seed, 2, 100 + len(ext)])
        img = render_frame(
            rng,
            height=360,
            width=480,
            probe="linear",
            anatomy="thyroid",
            banner=f"{pat.institution}  THYROID",
            scene_seed=pat.seed * 10 + 7 + len(ext),
        )
        _imwrite(root / pat.name / f"export{ext}", img)
        files += 1
    return {
        "files": files,
        "frames": files,
        "anatomy": "thyroid",
        "patients": n_pat,
        "near_duplicate_pairs": pairs,
    }


def _dicom(pat: _Patient, frames: np.ndarray, g: ProbeGeometry, *, series: int, fps: float, desc: str):
    """Ultrasound Multi-frame Image Storage dataset for (F, H, W) or (F, H, W, 3) uint8 ``frames``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop = _uid(pat.seed, "sop", series)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME_SOP
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = US_MULTIFRAME_SOP, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pat.study_uid, _uid(pat.seed, "series", series)
    ds.PatientName, ds.PatientID = pat.name, pat.pid
    ds.PatientBirthDate, ds.PatientSex = f"19{50 + pat.seed % 45:02d}0101", "FM"[pat.seed % 2]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = pat.study_date
    ds.StudyTime = ds.ContentTime = f"{9 + series % 8:02d}{(pat.seed * 7) % 60:02d}00"
    ds.InstitutionName, ds.ReferringPhysicianName = pat.institution, "REF^DOCTOR"
    ds.AccessionNumber, ds.StudyID = f"ACC{pat.seed:07d}", "1"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "US", "PHANTOM", "usf-mae phantom"
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = series, 1, desc
    n, h, w = frames.shape[:3]
    rgb = frames.ndim == 4
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns, ds.NumberOfFrames = h, w, n
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime, ds.CineRate, ds.FrameIncrementPointer = f"{1000.0 / fps:.1f}", int(fps), 0x00181063
    region = Dataset()  # where the image lives on screen: real scanners write this, croppers use it
    x0, y0, x1, y1 = g.bbox()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = max(0, x0), y0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = min(w, x1) - 1, y1 - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = g.depth_cm / g.depth_px
    ds.SequenceOfUltrasoundRegions = [region]
    ds.BurnedInAnnotation = "YES"
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    return ds


def _cine(
    seed_parts, pat: _Patient, n: int, h: int, w: int, doppler: bool, cycles: float = 1.0
) -> np.ndarray:
    """(n, h, w[, 3]) uint8 cardiac loop covering ``cycles`` heart beats."""
    rng = np.random.default_rng(seed_parts)
    return np.stack(
        [
            render_frame(
                rng,
                height=h,
                width=w,
                probe="sector",
                anatomy="cardiac",
                phase=cycles * i / n,
                banner=f"{pat.name}  {pat.institution}  ECHO",
                doppler=doppler,
                ecg=True,
                scene_seed=pat.seed * 10 + 3,
            )
            for i in range(n)
        ]
    )


def _write_cardiac(root: Path, seed: int, scale: float, pats, xdup: np.ndarray, xdup_pat: _Patient) -> dict:
    """Multi-frame DICOM cine loops (mono, RGB Doppler, RLE), a J2K still, a cross-dataset duplicate."""
    from pydicom.pixels.encoders import JPEG2000LosslessEncoder
    from pydicom.uid import JPEG2000Lossless, RLELossless

    root.mkdir(parents=True, exist_ok=True)
    files, frames, syntaxes = 0, 0, {}

    def save(ds, name: str) -> None:
        nonlocal files, frames
        ds.save_as(root / name, enforce_file_format=True)
        files += 1
        frames += int(ds.NumberOfFrames)
        syntaxes[name] = str(ds.file_meta.TransferSyntaxUID)

    g = probe_geometry("sector", 384, 512)
    for i in range(_n(2, scale)):
        pat = next(pats)
        n = (20, 26)[i % 2]
        save(
            _dicom(pat, _cine([seed, 3, i], pat, n, 384, 512, False), g, series=1, fps=25, desc="A4C cine"),
            f"{pat.pid}_cine_{i + 1:02d}.dcm",
        )
    for i in range(_n(1, scale)):
        pat = next(pats)
        fr = _cine([seed, 4, i], pat, 16, 288, 384, True)
        save(
            _dicom(pat, fr, probe_geometry("sector", 288, 384), series=2, fps=20, desc="A4C colour"),
            f"{pat.pid}_doppler_{i + 1:02d}.dcm",
        )
    for i in range(_n(1, scale)):
        pat = next(pats)
        ds = _dicom(pat, _cine([seed, 5, i], pat, 24, 384, 512, False), g, series=3, fps=30, desc="A4C RLE")
        ds.compress(RLELossless, generate_instance_uid=False)
        save(ds, f"{pat.pid}_rle_{i + 1:02d}.dcm")
    pat = next(pats)
    still = _cine([seed, 6], pat, 1, 480, 640, False)
    ds = _dicom(pat, still, probe_geometry("sector", 480, 640), series=4, fps=1, desc="A4C still")
    if JPEG2000LosslessEncoder.is_available:  # needs pylibjpeg-openjpeg (or gdcm); else one file fewer
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        save(ds, f"{pat.pid}_j2k.dcm")
    pat = xdup_pat  # the same pixels also sit in kidney_mixed/ as a PNG: cross-dataset duplicate
    save(
        _dicom(pat, xdup[None], probe_geometry("curved", *xdup.shape), series=5, fps=1, desc="renal"),
        f"{pat.pid}_export.dcm",
    )
    return {
        "files": files,
        "frames": frames,
        "anatomy": "cardiac",
        "patients": files,
        "transfer_syntaxes": syntaxes,
        "cross_duplicate": f"{pat.pid}_export.dcm",
    }


def _write_liver(root: Path, seed: int, scale: float, pats) -> dict:
    """NIfTI volumes (H, W, S) uint8: an elevational sweep through the liver, slice k = vol[:, :, k]."""
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    files, frames = 0, 0
    jobs = [(".nii.gz", 96)] * _n(3, scale) + [(".nii", 64)]
    for i, (ext, n) in enumerate(jobs):
        pat = next(pats)
        rng = np.random.default_rng([seed, 7, i])
        lesion = _random_lesion(rng, (0.35, 0.6), small_p=0.0, kind=("cyst", "solid")[i % 2])
        g = probe_geometry("curved", 200, 256)
        x0, y0, x1, y1 = g.bbox()
        vol = np.empty((y1 - y0, min(x1, g.width) - max(0, x0), n), np.uint8)
        for k in range(n):
            img = render_frame(
                rng,
                height=200,
                width=256,
                probe="curved",
                anatomy="liver",
                lesion=lesion,
                phase=0.3 * k / n,
                elevation=-0.25 + 0.5 * k / (n - 1),
                scene_seed=pat.seed * 10 + 1,
            )
            vol[:, :, k] = img[y0:y1, max(0, x0) : min(x1, g.width)]
        mm = 10.0 * g.depth_cm / g.depth_px
        aff = np.diag([mm, mm, 0.5 * 10.0 * g.depth_cm / (n - 1), 1.0])  # slice spacing of the sweep, mm
        img = nib.Nifti1Image(vol, aff)
        img.header["descrip"] = b"usf-mae phantom liver sweep"
        (root / pat.name).mkdir(parents=True, exist_ok=True)  # one folder per patient: the split group
        nib.save(img, str(root / pat.name / f"{pat.pid}_liver{ext}"))
        files, frames = files + 1, frames + n
    return {
        "files": files,
        "frames": frames,
        "anatomy": "liver",
        "patients": files,
        "layout": "(H, W, S) uint8",
    }


def _write_fetal(root: Path, seed: int, scale: float, pats) -> dict:
    """MP4 cine sweeps (H.264 if the PyAV build has libx264, else MPEG-4 part 2)."""
    import av

    root.mkdir(parents=True, exist_ok=True)
    files, frames = 0, 0
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    for i in range(_n(2, scale)):
        pat = next(pats)
        rng = np.random.default_rng([seed, 8, i])
        n = 40
        (root / pat.name).mkdir(parents=True, exist_ok=True)  # one folder per patient: the split group
        with av.open(str(root / pat.name / f"{pat.pid}_sweep.mp4"), "w", format="mp4") as cont:
            st = cont.add_stream(codec, rate=24)
            st.width, st.height, st.pix_fmt = 480, 360, "yuv420p"
            st.options = {"crf": "20", "preset": "veryfast", "threads": "1"} if codec == "libx264" else {}
            st.codec_context.thread_count = 1  # single-threaded: deterministic bytes, polite to shared CPUs
            for k in range(n):
                img = render_frame(
                    rng,
                    height=360,
                    width=480,
                    probe="curved",
                    anatomy="fetal",
                    phase=0.8 * k / n,
                    pan=-0.08 + 0.16 * k / n,
                    banner=f"{pat.institution}  OB  {pat.name}",
                    scene_seed=pat.seed * 10 + 2,
                )
                for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="gray")):
                    cont.mux(pkt)
            for pkt in st.encode():
                cont.mux(pkt)
        files, frames = files + 1, frames + n
    return {"files": files, "frames": frames, "anatomy": "fetal", "patients": files, "codec": codec}


def _kidney_still(seed: int, pat: _Patient, j: int, h: int = 480, w: int = 640) -> np.ndarray:
    rng = np.random.default_rng([seed, 9, pat.seed, j])
    lesion = _random_lesion(rng, (0.22, 0.32), kind="cyst") if j % 3 == 1 else None
    return render_frame(
        rng,
        height=h,
        width=w,
        probe="curved",
        anatomy="kidney",
        lesion=lesion,
        phase=float(rng.random()),
        banner=f"{pat.institution}  RENAL  {pat.pid}",
        calipers=lesion is not None,
        scene_seed=pat.seed * 10 + j,
    )


def _write_kidney(root: Path, seed: int, scale: float, pats, first: np.ndarray, first_pat: _Patient) -> dict:
    """A few PNG stills of another anatomy; the first one is also in cardiac_dicom/ as DICOM."""
    files = 0
    n_pat = max(1, _n(6, scale) // 3)
    for p in range(n_pat):
        pat = first_pat if p == 0 else next(pats)
        for j in range(3):
            img = first if (p, j) == (0, 0) else _kidney_still(seed, pat, j, *((480, 640), (600, 800))[j % 2])
            _imwrite(root / pat.name / f"renal_{j + 1}.png", img)
            files += 1
    return {
        "files": files,
        "frames": files,
        "anatomy": "kidney",
        "patients": n_pat,
        "cross_duplicate": f"{first_pat.name}/renal_1.png",
    }


def _write_broken(root: Path, seed: int, pats) -> dict:
    """Inputs a robust reader must reject (and never crash on)."""
    from pydicom.uid import ExplicitVRLittleEndian

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 10])
    (root / "empty.png").write_bytes(b"")
    _ok, png = cv2.imencode(
        ".png", render_frame(rng, height=120, width=160, probe="linear", anatomy="breast")
    )
    (root / "truncated.png").write_bytes(png.tobytes()[: len(png) // 2])
    (root / "random.dcm").write_bytes(rng.bytes(4096))
    (root / "notes.png").write_text("scan notes: patient moved, repeat next week\n")
    pat = next(pats)
    ds = _dicom(
        pat,
        np.zeros((1, 8, 8), np.uint8),
        probe_geometry("linear", 8 * 10, 8 * 10),
        series=9,
        fps=1,
        desc="no pixels",
    )
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(root / "nopixels.dcm", enforce_file_format=True)
    return {"files": 5, "frames": 0, "anatomy": None, "patients": 0, "bad": 5}


def write_demo_corpus(
    out: Path, seed: int = 0, scale: float = 1.0, patient_name: str = "DEMO^PATIENT"
) -> dict:
    """Write a small multi-dataset raw collection under ``out`` (one top-level folder per dataset).

    Returns ``{dataset: {"files": n, "frames": n, "anatomy": str | None, "patients": n, "bytes": n,
    ...format-specific notes}}``. ``scale`` multiplies the file counts. Patient identities (``patient_name``
    with a _NNN suffix) are deliberately present in folder names, banners and DICOM tags.

    Layout at scale 1 (about 570 frames, 31 MB, a few seconds on one core):

    - ``breast_png/<patient>/img_NNNN.png``: 30 stills, 8-bit gray, some 16-bit (full range and
      12-bit-in-16), a few RGB with a Doppler box, some with calipers.
    - ``thyroid_jpg/<patient>/``: JPEGs; ``thy_01`` of each patient also as PNG (near-duplicate
      pairs, listed in ``near_duplicate_pairs``); one ``export.bmp`` and one ``export.tiff``.
    - ``cardiac_dicom/*.dcm``: Ultrasound Multi-frame Image Storage; MONOCHROME2 cines (20, 26
      frames), an RGB Doppler cine, an RLE Lossless cine, a JPEG 2000 Lossless still (when an encoder
      is installed) and ``cross_duplicate``, a single frame equal to a PNG in ``kidney_mixed``.
      Groups come from the tags (PatientID / StudyInstanceUID), not from folders.
    - ``liver_volumes/<patient>/*.nii.gz`` (96 slices) and one ``*.nii`` (64): (H, W, S) uint8.
    - ``fetal_video/<patient>/*.mp4``: 40-frame sweeps (H.264 when available).
    - ``kidney_mixed/<patient>/renal_N.png``: a few more stills.
    - ``broken/``: empty.png, truncated.png, notes.png (text), random.dcm (noise), nopixels.dcm.
    """
    out = Path(out)
    pats = _patients(patient_name, seed)
    summary: dict[str, dict] = {}
    summary["breast_png"] = _write_breast(out / "breast_png", seed, scale, pats)
    summary["thyroid_jpg"] = _write_thyroid(out / "thyroid_jpg", seed, scale, pats)
    kid_pat = next(pats)
    kid0 = _kidney_still(seed, kid_pat, 0)
    summary["cardiac_dicom"] = _write_cardiac(out / "cardiac_dicom", seed, scale, pats, kid0, kid_pat)
    summary["liver_volumes"] = _write_liver(out / "liver_volumes", seed, scale, pats)
    summary["fetal_video"] = _write_fetal(out / "fetal_video", seed, scale, pats)
    summary["kidney_mixed"] = _write_kidney(out / "kidney_mixed", seed, scale, pats, kid0, kid_pat)
    summary["broken"] = _write_broken(out / "broken", seed, pats)
    for name, s in summary.items():
        s["bytes"] = _bytes_under(out / name)
    return summary


# --------------------------------------------------------------------------------------------
# Writers: downstream lesion-classification task
# --------------------------------------------------------------------------------------------
TASK_CLASSES = ("normal", "cyst", "solid")
# anatomy -> (probe, lesion depth range, lesion lateral range)
_TASK_ANATOMY = {
    "breast": ("linear", (0.22, 0.5), (-0.28, 0.28)),
    "thyroid": ("linear", (0.28, 0.38), (0.2, 0.38)),
    "liver": ("curved", (0.3, 0.65), (-0.3, 0.3)),
    "kidney": ("curved", (0.2, 0.3), (-0.3, 0.3)),
}
_TASK_MEAN = 58.0  # every task image is normalised to this whole-image mean grey level


def _normalise_mean(img: np.ndarray, mask: np.ndarray, target: float) -> np.ndarray:
    """(H, W) uint8 -> same, with footprint pixels rescaled so that the whole-image mean is ``target``:
    a dark lesion must not be findable from the mean brightness alone."""
    f = img.astype(np.float32)
    n = f.size
    for _ in range(4):  # clipping at 255 moves the mean a little: iterate
        fp = f[mask]
        s = (target * n - float(f[~mask].sum())) / max(1.0, float(fp.sum()))
        f[mask] = np.clip(fp * s, 0, 255)
    return np.rint(f).astype(np.uint8)


def write_downstream_task(
    out: Path,
    seed: int = 0,
    n_patients: int = 40,
    per_patient: int = 6,
    *,
    small_p: float = 0.3,
    size_scale: float = 1.0,
    conspicuity: float = 0.0,
) -> Path:
    """Write a labelled lesion task: ``out/images/*.png`` (256 x 320 gray) and ``out/labels.csv``
    (columns ``path,label,patient``; path relative to ``out``). Classes: "normal", "cyst", "solid".

    The class is per patient; a patient's images are views of one scene (same anatomy, probe, speckle,
    lesion) at different breathing phases, elevations and probe positions, so splits must group by
    patient. Class, anatomy and probe are stratified independently (no anatomy predicts a class), lesion
    size/contrast/position vary (some small, some weakly shadowing or complicated cysts), calipers and
    banners appear regardless of class, and every image has the same mean brightness.

    small_p (share of small lesions), size_scale (radius factor) and conspicuity (0..1, see
    ``_random_lesion``) set the difficulty; the defaults are the original task.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0x7A5C])
    anats = list(_TASK_ANATOMY)
    order = rng.permutation(n_patients)
    rows = []
    for pid, i in enumerate(order):
        label, anatomy = TASK_CLASSES[i % 3], anats[(i // 3) % len(anats)]
        probe, z_range, x_range = _TASK_ANATOMY[anatomy]
        prng = np.random.default_rng([seed, 0x7A5C, int(i)])
        lesion = None
        if label != "normal":
            lesion = _random_lesion(prng, z_range, x_range, small_p=small_p, kind=label,
                                    size_scale=size_scale, conspicuity=conspicuity)
            if anatomy == "thyroid":
                lesion.centre = (lesion.centre[0], lesion.centre[1] * float(prng.choice([-1, 1])))
        scene = int(prng.integers(1 << 30))
        banner = f"US {anatomy.upper()} {pid:03d}" if prng.random() < 0.5 else None
        g = probe_geometry(probe, 256, 320)
        r_mean = 0.5 * sum(lesion.radii) if lesion else 0.05
        for v in range(per_patient):
            img = render_frame(
                prng,
                height=256,
                width=320,
                probe=probe,
                anatomy=anatomy,
                lesion=lesion,
                phase=float(prng.random()),
                elevation=float(prng.uniform(-0.6, 0.6)) * r_mean,
                pan=float(prng.uniform(-0.05, 0.05)),
                banner=banner,
                calipers=bool(prng.random() < 0.25),
                scene_seed=scene,
            )
            img = _normalise_mean(img, g.mask(), _TASK_MEAN)
            rel = f"images/P{pid:03d}_{v + 1}.png"
            _imwrite(out / rel, img)
            rows.append((rel, label, f"P{pid:03d}"))
    csv_path = out / "labels.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("path", "label", "patient"))
        w.writerows(rows)
    return csv_path


if __name__ == "__main__":  # python -m phantom OUT_DIR [SEED]
    import json
    import sys
    import time

    t0 = time.perf_counter()
    res = write_demo_corpus(Path(sys.argv[1]), seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(json.dumps(res, indent=1, default=str))
    print(f"{time.perf_counter() - t0:.1f} s")
