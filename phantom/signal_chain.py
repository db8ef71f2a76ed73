"""The scanner's signal chain: tissue maps -> B-mode pixels.

Scatterers (a complex Gaussian texture fixed in tissue coordinates, one per scene) are scaled by
the backscatter map, blurred by the point-spread function in beam coordinates and envelope
detected (Rayleigh speckle); attenuation is integrated along each beam and compensated by the TGC;
the result is log-compressed to the display range and scan-converted to the screen.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

from .geometry import _BeamGrid
from .tissue import _Maps

# Signal chain constants (dimensionless units: echo 1 = liver parenchyma, depth 1 = imaging depth).
_K_ATT = 4.5  # soft-tissue round-trip attenuation over the full depth, in nepers (~39 dB)
_TGC_FRACTION = 0.9  # TGC undoes 90 % of it: deep tissue stays a little darker, as on real scanners
_DYN_RANGE_DB = 50.0  # displayed dynamic range after log compression
_OFFSET_DB = 22.0  # echo 1 (parenchyma) maps to ~ 255 * 22 / 50 = 112 grey
_TEX_MARGIN_Z = 0.3  # speckle texture margin around the footprint (room for motion and pan)
_TEX_MARGIN_X = 0.3


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
