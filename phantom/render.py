"""Render one scanner-like B-mode frame (:func:`render_frame`).

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

from dataclasses import replace

import cv2
import numpy as np

from .anatomy import _ANATOMY, ANATOMIES
from .geometry import _beam_grid, probe_geometry
from .lesion import _paint_lesion, Lesion
from .overlays import (
    _caliper_points,
    _date_text,
    _doppler,
    _draw_banner,
    _draw_calipers,
    _draw_ecg,
    _draw_scale,
)
from .signal_chain import _beamform, _scan_convert, _scene_texture, _TEX_MARGIN_X, _TEX_MARGIN_Z
from .tissue import _Field


def _scene_rng(scene_seed: int, anatomy: str) -> np.random.Generator:
    return np.random.default_rng([scene_seed, ANATOMIES.index(anatomy)])


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
        az.astype(np.float32), ax.astype(np.float32), samp[..., 2], samp[..., 3], phase, elevation
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
