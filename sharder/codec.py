"""Encoding of curated frames inside shards (design §1: ``jpg`` default, ``png``, ``zst``).

jpg: 8-bit grayscale baseline JPEG (decodes on the GPU with nvJPEG; DALI decodes PNG on the CPU).
png: lossless, CPU decode. zst: lossless ``.npy`` bytes compressed with zstandard (fastest CPU
decode; readable by the PyTorch loader, not by DALI's image decoder).
"""
from __future__ import annotations

import io

import cv2
import numpy as np
import zstandard


def encode(img: np.ndarray, codec: str, jpeg_quality: int = 95) -> bytes:
    """img: (H, W) uint8 -> encoded bytes."""
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ValueError(f"encode expects (H, W) uint8, got {img.shape} {img.dtype}")
    if codec == "jpg":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif codec == "png":
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    elif codec == "zst":
        b = io.BytesIO()
        np.save(b, img, allow_pickle=False)
        return zstandard.ZstdCompressor(level=3).compress(b.getvalue())
    else:
        raise ValueError(f"unknown codec {codec!r}")
    if not ok:
        raise ValueError(f"{codec} encoding failed")
    return buf.tobytes()


def decode(data: bytes, ext: str) -> np.ndarray:
    """Encoded bytes -> (H, W) uint8. Raises ValueError when the bytes do not decode."""
    if ext == "zst":
        raw = zstandard.ZstdDecompressor().decompress(data)
        img = np.load(io.BytesIO(raw), allow_pickle=False)
    else:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None or img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"{ext} member does not decode to an 8-bit grayscale image")
    return img
