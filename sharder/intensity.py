"""The one conversion of decoded pixels to 8-bit gray, shared by every path an image takes.

Pretraining shards (``sharder.curate``), the torch fine-tune loader (``dali_pipes.finetune_torch``)
and the DALI fine-tune loader (``dali_pipes.finetune``, which hands 16-bit files to this module
before its decoder sees them) all call :func:`to_uint8` / :func:`gray_u8`, so a 16-bit frame
becomes the same 8-bit image whether it was pretrained on or fine-tuned on. Before, the sharder
windowed, the fine-tune reader min-max scaled and DALI's decoder divided by 257: three different
images of one scan.

Why the sharder's percentile window is the rule kept: 12/16-bit ultrasound exports carry hot
pixels and max-value burned-in text; min-max (and 1/257, which maps a 12-bit image into the
bottom 16 gray levels) squash the tissue into a few levels, while a window from the 0.5th to
the 99.5th percentile keeps the speckle's contrast and saturates only 0.5% at either end. It is
also what the pretrained encoder saw.

No torch, no DALI: ``sharder/`` runs on CPU-only preparation boxes (design §0).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from .readers.detect import HEAD_BYTES, image_format

WINDOW_PERCENTILES = (0.5, 99.5)  # robust window: a few hot pixels / burned-in max-value text
_PERCENTILE_SAMPLES = 1_000_000  # percentiles on a regular subsample: same window, bounded cost


def to_uint8(pixels: np.ndarray) -> tuple[np.ndarray, str]:
    """Map any numeric image to uint8; returns (same shape uint8, op).

    - uint8: returned unchanged, op ``"to_uint8:none"``.
    - bool: 0/255, ``"to_uint8:bool"``.
    - integers already within 0..255 (8-bit data in a 16-bit container): exact cast, ``"to_uint8:cast"``.
    - otherwise a linear window from the 0.5th to the 99.5th percentile of the finite values,
      clipped (``"to_uint8:window"``). Percentiles rather than min/max because 12/16-bit sources
      carry hot pixels and max-value burned-in text that would squash the tissue into a few gray
      levels; 0.5% saturating at either end costs nothing visible in speckle. When that window is
      empty (>99% of pixels share one value) min/max is used (``"to_uint8:minmax"``), and a
      constant image becomes zeros (``"to_uint8:const"``). NaN/inf map to 0.
    """
    a = np.asarray(pixels)
    if a.dtype == np.uint8:
        return a, "to_uint8:none"
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255, "to_uint8:bool"
    if np.issubdtype(a.dtype, np.integer) and a.size and a.min() >= 0 and a.max() <= 255:
        return a.astype(np.uint8), "to_uint8:cast"

    f = a.astype(np.float64)
    flat = f.reshape(-1)
    sample = flat[:: max(1, flat.size // _PERCENTILE_SAMPLES)]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros(a.shape, np.uint8), "to_uint8:const"
    lo, hi = (float(v) for v in np.percentile(sample, WINDOW_PERCENTILES))
    op = "to_uint8:window"
    if hi <= lo:
        lo, hi, op = float(sample.min()), float(sample.max()), "to_uint8:minmax"
    if hi <= lo:
        return np.zeros(a.shape, np.uint8), "to_uint8:const"
    out = (f - lo) * (255.0 / (hi - lo))
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), op


def gray_u8(pixels: np.ndarray, order: str = "rgb", what: str = "image") -> tuple[np.ndarray, list[str]]:
    """Any decoded image -> ((H, W) uint8 gray, ops applied), in the sharder's order: first
    :func:`to_uint8` (on all channels at once), then BT.601 luma for colour.

    pixels: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (alpha dropped). order: channel order of
    colour input, ``"rgb"`` (the sharder's readers, PIL) or ``"bgr"`` (OpenCV's imread).
    Raises ValueError naming ``what`` for any other shape."""
    src = np.asarray(pixels)
    a = src[:, :, 0] if src.ndim == 3 and src.shape[2] == 1 else src
    if a.size == 0 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"{what}: unsupported image shape {src.shape} (need H x W gray or H x W x 3/4 colour)")
    if order not in ("rgb", "bgr"):
        raise ValueError(f"channel order must be 'rgb' or 'bgr', got {order!r}")
    u8, op = to_uint8(a)
    ops = [] if op == "to_uint8:none" else [op]
    if u8.ndim == 3:
        code = cv2.COLOR_RGB2GRAY if order == "rgb" else cv2.COLOR_BGR2GRAY
        u8 = cv2.cvtColor(np.ascontiguousarray(u8[:, :, :3]), code)  # BT.601 luma, rounded
        ops.append("gray:luma")
    return np.ascontiguousarray(u8), ops


def needs_conversion(path: str) -> bool:
    """True when the image file at ``path`` is not plain 8-bit gray/colour, i.e. an image
    decoder's own 16-bit handling (DALI: 1/257) would differ from :func:`to_uint8`. PNG is
    judged from its header (bit depth byte of IHDR); JPEG is 8-bit; anything else is decoded
    with OpenCV to look at its dtype."""
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    fmt = image_format(head)
    if fmt == "png" and head[12:16] == b"IHDR":
        return head[24] > 8  # bit depth 16 (1/2/4-bit palettes and gray decode to 8-bit)
    if fmt == "jpeg":
        return False  # baseline/progressive JPEG is 8-bit; 12-bit JPEG is not read by DALI either
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    return img is not None and img.dtype != np.uint8


def read_gray_u8(path: str) -> np.ndarray:
    """(H, W) uint8 gray of an image file through :func:`gray_u8` (OpenCV decode, all bit
    depths kept). Raises OSError naming the file when it cannot be decoded."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"{path}: cannot decode image")
    return gray_u8(img, order="bgr", what=str(path))[0]


def eight_bit_files(paths: list[str], cache_dir: str | None = None) -> list[str]:
    """``paths`` with every file that :func:`needs_conversion` replaced by an 8-bit gray PNG of
    :func:`read_gray_u8` (lossless), so a decoder that only sees files (DALI) decodes exactly the
    image the other paths make. Converted files are cached under ``cache_dir`` (default
    ``$TMPDIR/usf-mae-gray-u8``), keyed by the source's absolute path, size and mtime, written
    atomically (several ranks may convert the same file at once). 8-bit files pass unchanged."""
    out: list[str] = []
    root: Path | None = None
    for p in paths:
        if not needs_conversion(p):
            out.append(p)
            continue
        if root is None:
            root = Path(cache_dir or Path(tempfile.gettempdir()) / "usf-mae-gray-u8")
            root.mkdir(parents=True, exist_ok=True)
        st = os.stat(p)
        key = hashlib.sha256(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
        dst = root / f"{key}.png"
        if not dst.exists():
            tmp = root / f".{key}.{os.getpid()}.png"
            if not cv2.imwrite(str(tmp), read_gray_u8(p)):
                raise OSError(f"{tmp}: cannot write the 8-bit copy of {p}")
            os.replace(tmp, dst)
        out.append(str(dst))
    return out


__all__ = ["WINDOW_PERCENTILES", "eight_bit_files", "gray_u8", "needs_conversion", "read_gray_u8", "to_uint8"]
