"""Annotations burned into the pixels, as scanners do: banner text with date and time, depth ticks
and grey bar, ECG trace, calipers with a readout, and the colour-Doppler box with its scale bar."""

from __future__ import annotations

import math

import cv2
import numpy as np

from .geometry import _BeamGrid, ProbeGeometry
from .lesion import Lesion

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


def _date_text(scene_seed: int) -> str:
    r = np.random.default_rng([scene_seed, 0xDA7E])
    y, mo, d = int(r.integers(2016, 2025)), int(r.integers(1, 13)), int(r.integers(1, 29))
    h, mi, s = int(r.integers(7, 19)), int(r.integers(0, 60)), int(r.integers(0, 60))
    return f"{y:04d}/{mo:02d}/{d:02d} {h:02d}:{mi:02d}:{s:02d}"


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
