"""NIfTI dataset of the demo corpus: liver volumes, each an elevational sweep (slice k = vol[:, :, k])."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .geometry import probe_geometry
from .lesion import _random_lesion
from .patients import _Patient
from .render import render_frame


def _write_liver(root: Path, seed: int, pats: Iterator[_Patient], n_gz: int) -> dict:
    """NIfTI volumes (H, W, S) uint8, ``n_gz`` gzipped and one plain: an elevational sweep through the
    liver, slice k = vol[:, :, k]."""
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    files, frames = 0, 0
    jobs = [(".nii.gz", 96)] * n_gz + [(".nii", 64)]
    for i, (ext, n) in enumerate(jobs):
        pat = next(pats)
        rng = np.random.default_rng([seed, 7, i])
        lesion = _random_lesion(rng, (0.35, 0.6), small_p=0.0, kind=("cyst", "solid")[i % 2])
        g = probe_geometry("curved", 200, 256)
        x0, y0, x1, y1 = g.bbox()
        vol = np.empty((y1 - y0, min(x1, g.width) - max(0, x0), n), np.uint8)
        for k in range(n):
            img = render_frame(rng, height=200, width=256, probe="curved", anatomy="liver", lesion=lesion,
                               phase=0.3 * k / n, elevation=-0.25 + 0.5 * k / (n - 1),
                               scene_seed=pat.seed * 10 + 1)
            vol[:, :, k] = img[y0:y1, max(0, x0) : min(x1, g.width)]
        mm = 10.0 * g.depth_cm / g.depth_px
        aff = np.diag([mm, mm, 0.5 * 10.0 * g.depth_cm / (n - 1), 1.0])  # slice spacing of the sweep, mm
        img = nib.Nifti1Image(vol, aff)
        img.header["descrip"] = b"usf-mae phantom liver sweep"
        (root / pat.name).mkdir(parents=True, exist_ok=True)  # one folder per patient: the split group
        nib.save(img, str(root / pat.name / f"{pat.pid}_liver{ext}"))
        files, frames = files + 1, frames + n
    return {"files": files, "frames": frames, "anatomy": "liver", "patients": files,
            "layout": "(H, W, S) uint8"}
