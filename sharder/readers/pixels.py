"""What every reader hands out: decoded arrays normalised to :class:`~sharder.frames.Frame`
pixels, and the decompression-bomb guard run on header dimensions before anything is decoded.

``Frame.pixels`` is ``(H, W)`` gray in its native dtype (uint8, uint16, int16 or float32; other
integer/float types are narrowed to one of these) or ``(H, W, 3)`` uint8 RGB.
"""
from __future__ import annotations

import numpy as np

from ..frames import InputRejected, ReaderOptions

def check_size(height: int, width: int, opts: ReaderOptions) -> None:
    """Decompression-bomb guard, called with header dimensions before decoding."""
    if height <= 0 or width <= 0:
        raise InputRejected("undecodable", "The header declares an empty image.")
    if height * width > opts.max_pixels:
        raise InputRejected(
            "too_large",
            f"A frame of {height}x{width} pixels exceeds the limit of {opts.max_pixels} pixels.",
        )


def native(arr: np.ndarray) -> np.ndarray:
    """Same values in native byte order (big-endian DICOM/NIfTI data arrives as '>u2' etc.)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _narrow_int(arr: np.ndarray) -> np.ndarray:
    """Wide/odd integer gray -> uint16 or int16 when the values fit, float32 otherwise."""
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo >= 0 and hi <= 0xFFFF:
        return arr.astype(np.uint16)
    if lo >= -0x8000 and hi <= 0x7FFF:
        return arr.astype(np.int16)
    return arr.astype(np.float32)


# Why not sharder.intensity.gray_u8: these two normalise what a decoder returns (byte order,
# dtype, layout) and keep the information; gray stays at its native depth because the 8-bit
# window (intensity.to_uint8) is curation's step, taken on the whole frame after the reader.
# Colour wider than 8 bits is different on purpose: it is display data (the scanner rendered it
# for a screen, DICOM says how many bits are significant), so its top 8 significant bits are
# kept, the same for every frame of a file; a per-frame percentile window would shift its
# colours and brightness frame to frame.
def gray_pixels(arr: np.ndarray) -> np.ndarray:
    """(H, W) any numeric dtype -> (H, W) uint8 | uint16 | int16 | float32; rejects NaN/inf."""
    arr = native(arr)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * np.uint8(255)
    elif arr.dtype == np.int8:
        arr = arr.astype(np.int16)
    elif arr.dtype.kind in "iu" and arr.dtype not in (np.uint8, np.uint16, np.int16):
        arr = _narrow_int(arr)
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise InputRejected("non_finite", "The pixel data contains NaN or infinite values.")
    elif arr.dtype.kind not in "iu":
        raise InputRejected("unsupported", f"Pixel type {arr.dtype.kind!r} is not supported.")
    return np.require(arr, requirements="CW")  # PIL hands out read-only arrays


def rgb_pixels(arr: np.ndarray, bits: int | None = None) -> np.ndarray:
    """(H, W, 3|4) -> (H, W, 3) uint8, C-ordered.  Integers keep their top 8 significant bits
    (``bits``: significant bits per sample, default the dtype width); floats are taken as 0..1
    if they stay within it, else as 0..255, and clipped."""
    arr = native(arr)[..., :3]
    if arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        bits = bits or arr.dtype.itemsize * 8
        shifted = np.right_shift(np.clip(arr, 0, None).astype(np.uint64), max(bits - 8, 0))
        arr = np.clip(shifted, 0, 255).astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputRejected("non_finite", "The pixel data contains NaN or infinite values.")
        scale = 255.0 if arr.size and float(arr.max()) <= 1.0 else 1.0
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputRejected("unsupported", f"Colour pixel type {arr.dtype.kind!r} is not supported.")
    # Planar-configured DICOM and channel slices come out strided: hand over a plain array.
    return np.require(arr, requirements="CW")


def frame_pixels(arr: np.ndarray) -> np.ndarray:
    """Dispatch on shape: (H, W) gray, (H, W, C>=3) colour, (H, W, 1) gray."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return gray_pixels(arr)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return rgb_pixels(arr)
    raise InputRejected("unsupported", f"Frames of {arr.ndim} dimensions / {arr.shape[-1]} channels "
                                       "are not supported.")

