"""Focal lesions: the :class:`Lesion` description, how it is painted into tissue maps (cysts give
posterior enhancement, solids posterior shadowing), and random lesions of varied size and contrast."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .tissue import _ell, _Field, _inside, _Maps, _ridge


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


def _random_lesion(
    rng: np.random.Generator,
    z_range: tuple[float, float],
    x_range=(-0.28, 0.28),
    small_p: float = 0.3,
    kind: str | None = None,
    size_scale: float = 1.0,
    conspicuity: float = 0.0,
    mirror: bool = False,
) -> Lesion:
    """A lesion with varied kind, size, shape, position and contrast.

    size_scale multiplies the radius. conspicuity in [0, 1] narrows the contrast ranges towards
    the textbook end (0: simple-to-complicated cysts, weakly-to-strongly shadowing solids; 1:
    anechoic, strongly enhancing cysts and hypoechoic, strongly shadowing solids). The random
    draws are the same for any value of both, so defaults reproduce the original lesions. mirror puts
    the lesion on either side of the centre line at random (thyroid: either lobe), one more draw."""
    kind = kind or ("cyst" if rng.random() < 0.5 else "solid")
    r = rng.uniform(0.02, 0.035) if rng.random() < small_p else rng.uniform(0.035, 0.1)
    r *= size_scale
    aspect = rng.uniform(0.7, 1.3)
    c = float(np.clip(conspicuity, 0.0, 1.0))
    if kind == "cyst":  # simple (anechoic) to complicated (internal echoes) cysts
        echo, att = float(rng.uniform(0.0, 0.25 - 0.2 * c)), float(rng.uniform(0.08, 0.6 - 0.4 * c))
    else:  # weakly to strongly shadowing solids
        echo, att = float(rng.uniform(0.15, 0.6 - 0.3 * c)), float(rng.uniform(1.3 + 1.2 * c, 4.0))
    lesion = Lesion(
        kind,
        (float(rng.uniform(*z_range)), float(rng.uniform(*x_range))),
        (float(r * aspect), float(r / aspect)),
        float(rng.uniform(-0.6, 0.6)),
        echo,
        att,
        float(rng.uniform(0.1, 0.8)),
        int(rng.integers(1 << 30)),
    )
    if mirror:
        lesion.centre = (lesion.centre[0], lesion.centre[1] * float(rng.choice([-1, 1])))
    return lesion
