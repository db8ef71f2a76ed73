"""The six anatomies: how each is laid out, how it moves, and how it is painted as tissue maps.

Each anatomy is three functions: ``params(rng) -> dict`` draws one patient's layout (organ sizes,
vessel positions, ...); ``motion(z, x, phase, p)`` maps screen tissue coordinates to where the
tissue shown there sits at ``phase`` (breathing, heart beat, fetal movement: an inverse warp, so
speckle moves with the tissue); ``paint(f, p) -> _Maps`` paints echo, attenuation and flow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .tissue import _band, _ell, _Field, _inside, _Maps, _ridge, _seg_dist, _step


def _body_wall(m: _Maps, f: _Field, thickness: float, skin: float = 0.012) -> None:
    """Skin (bright), subcutaneous fat (hypoechoic), muscle (striated) and a bright fascia line."""
    z = f.z
    fat_end = thickness * 0.5
    m.paint(_step(skin - z, 0.004), echo=2.2)
    m.paint(_band(z, skin, fat_end, 0.004), echo=0.4 * (1 + 0.3 * f.s2))
    fibres = 0.6 + 0.35 * np.cos(2 * np.pi * (z / 0.011 + 0.8 * f.s1))
    m.paint(_band(z, fat_end, thickness, 0.004), echo=0.6 * fibres)
    m.echo += 2.5 * _ridge(z - thickness, 0.004)


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
# the index of an anatomy in this tuple seeds its scene layout: the order is part of the output
ANATOMIES = tuple(_ANATOMY)
