"""Broken inputs of the demo corpus: files a robust reader must reject without crashing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .dicom import _dicom
from .geometry import probe_geometry
from .patients import _Patient
from .render import render_frame


def _write_broken(root: Path, seed: int, pats: Iterator[_Patient]) -> dict:
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
