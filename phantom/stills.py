"""Still-image datasets of the demo corpus: breast PNGs (8-bit, 16-bit, RGB Doppler), thyroid JPEGs
with PNG twins (near-duplicates) and one BMP and TIFF, kidney PNGs (one also exported as DICOM)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .lesion import _random_lesion, Lesion
from .patients import _Patient
from .render import render_frame


def _imwrite(path: Path, img: np.ndarray, params: tuple[int, ...] = ()) -> None:
    """Write an RGB or gray (8/16-bit) image with OpenCV (which wants BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    if not cv2.imwrite(str(path), arr, list(params)):
        raise OSError(f"could not write {path}")


def _still(
    rng: np.random.Generator,
    pat: _Patient,
    j: int,
    size: tuple[int, int],
    probe: str,
    anatomy: str,
    lesion: Lesion | None,
    banner: str,
    calipers: bool,
    doppler: bool = False,
) -> np.ndarray:
    """(H, W) uint8 (or (H, W, 3) with ``doppler``) view ``j`` of ``pat``'s scene (scene seed
    ``pat.seed * 10 + j``) at a breathing/heart phase drawn from ``rng``; ``size`` is (H, W)."""
    h, w = size
    phase = float(rng.random())  # drawn before the frame's electronic noise
    return render_frame(rng, height=h, width=w, probe=probe, anatomy=anatomy, lesion=lesion, phase=phase,
                        banner=banner, calipers=calipers, doppler=doppler, scene_seed=pat.seed * 10 + j)


def _write_breast(root: Path, seed: int, pats: Iterator[_Patient], n_pat: int) -> dict:
    """PNG stills in per-patient folders: mostly 8-bit gray, some 16-bit, some RGB Doppler."""
    files, k, bit16, rgb = 0, 0, 0, 0
    for _ in range(n_pat):
        pat = next(pats)
        for j in range(5):
            k += 1
            rng = np.random.default_rng([seed, 1, k])
            h, w = ((480, 640), (600, 800), (360, 480))[k % 3]
            lesion = _random_lesion(rng, (0.25, 0.5)) if rng.random() < 0.5 else None
            doppler = k % 9 == 5
            banner = f"{pat.name}  {pat.institution}  L12-5 BREAST"
            img = _still(rng, pat, j, (h, w), "linear", "breast", lesion, banner, k % 3 == 0, doppler)
            path = root / pat.name / f"img_{j + 1:04d}.png"
            if doppler:
                rgb += 1
            elif k % 7 == 3:  # 16-bit PNG, full range
                img, bit16 = img.astype(np.uint16) * 257, bit16 + 1
            elif k % 7 == 6:  # 12-bit data in a 16-bit PNG, as some exporters write it
                img, bit16 = img.astype(np.uint16) * 16, bit16 + 1
            _imwrite(path, img)
            files += 1
    return {"files": files, "frames": files, "anatomy": "breast", "patients": n_pat,
            "png16": bit16, "rgb": rgb}


def _write_thyroid(root: Path, seed: int, pats: Iterator[_Patient], n_pat: int) -> dict:
    """JPEG stills; a few also saved as PNG (same pixels: near-duplicates), one BMP, one TIFF."""
    files, pairs = 0, []
    pat = None
    for p in range(n_pat):
        pat = next(pats)
        for j in range(4):
            rng = np.random.default_rng([seed, 2, p, j])
            lesion = None
            if rng.random() < 0.4:  # thyroid nodule inside a lobe
                lesion = _random_lesion(rng, (0.28, 0.38), x_range=(0.22, 0.36), mirror=True)
            banner = f"{pat.institution}  THYROID  {pat.pid}"
            img = _still(rng, pat, j, (480, 640), "linear", "thyroid", lesion, banner, lesion is not None)
            jpg = root / pat.name / f"thy_{j + 1:02d}.jpg"
            _imwrite(jpg, img, (cv2.IMWRITE_JPEG_QUALITY, 85 + 3 * j))
            files += 1
            if j == 0:  # the same frame exported twice, lossless and lossy
                _imwrite(jpg.with_suffix(".png"), img)
                files += 1
                pairs.append([str(jpg.relative_to(root)), str(jpg.with_suffix(".png").relative_to(root))])
    for ext in (".bmp", ".tiff"):
        rng = np.random.default_rng([seed, 2, 100 + len(ext)])
        img = render_frame(rng, height=360, width=480, probe="linear", anatomy="thyroid",
                           banner=f"{pat.institution}  THYROID", scene_seed=pat.seed * 10 + 7 + len(ext))
        _imwrite(root / pat.name / f"export{ext}", img)
        files += 1
    return {"files": files, "frames": files, "anatomy": "thyroid", "patients": n_pat,
            "near_duplicate_pairs": pairs}


def _kidney_still(seed: int, pat: _Patient, j: int, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """(H, W) uint8 view ``j`` of ``pat``'s kidney; views with ``j % 3 == 1`` show a cyst."""
    rng = np.random.default_rng([seed, 9, pat.seed, j])
    lesion = _random_lesion(rng, (0.22, 0.32), kind="cyst") if j % 3 == 1 else None
    banner = f"{pat.institution}  RENAL  {pat.pid}"
    return _still(rng, pat, j, size, "curved", "kidney", lesion, banner, lesion is not None)


def _write_kidney(
    root: Path, seed: int, pats: Iterator[_Patient], n_pat: int, first: np.ndarray, first_pat: _Patient
) -> dict:
    """A few PNG stills of another anatomy; the first one is also in cardiac_dicom/ as DICOM."""
    files = 0
    for p in range(n_pat):
        pat = first_pat if p == 0 else next(pats)
        for j in range(3):
            img = first if (p, j) == (0, 0) else _kidney_still(seed, pat, j, ((480, 640), (600, 800))[j % 2])
            _imwrite(root / pat.name / f"renal_{j + 1}.png", img)
            files += 1
    return {"files": files, "frames": files, "anatomy": "kidney", "patients": n_pat,
            "cross_duplicate": f"{first_pat.name}/renal_1.png"}
