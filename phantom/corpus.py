"""The demo corpus: which datasets, in which formats, how many files, from which patients."""

from __future__ import annotations

from pathlib import Path

from .broken import _write_broken
from .dicom import _write_cardiac
from .nifti import _write_liver
from .patients import _patients
from .stills import _kidney_still, _write_breast, _write_kidney, _write_thyroid
from .video import _write_fetal


def _n(count: int, scale: float) -> int:
    """File count scaled by ``scale`` (at least one)."""
    return max(1, round(count * scale))


def _bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def write_demo_corpus(
    out: Path, seed: int = 0, scale: float = 1.0, patient_name: str = "DEMO^PATIENT"
) -> dict:
    """Write a small multi-dataset raw collection under ``out`` (one top-level folder per dataset).

    Returns ``{dataset: {"files": n, "frames": n, "anatomy": str | None, "patients": n, "bytes": n,
    ...format-specific notes}}``. ``scale`` multiplies the file counts. Patient identities (``patient_name``
    with a _NNN suffix) are deliberately present in folder names, banners and DICOM tags.

    Layout at scale 1 (about 570 frames, 31 MB, a few seconds on one core):

    - ``breast_png/<patient>/img_NNNN.png``: 30 stills, 8-bit gray, some 16-bit (full range and
      12-bit-in-16), a few RGB with a Doppler box, some with calipers.
    - ``thyroid_jpg/<patient>/``: JPEGs; ``thy_01`` of each patient also as PNG (near-duplicate
      pairs, listed in ``near_duplicate_pairs``); one ``export.bmp`` and one ``export.tiff``.
    - ``cardiac_dicom/*.dcm``: Ultrasound Multi-frame Image Storage; MONOCHROME2 cines (20, 26
      frames), an RGB Doppler cine, an RLE Lossless cine, a JPEG 2000 Lossless still (when an encoder
      is installed) and ``cross_duplicate``, a single frame equal to a PNG in ``kidney_mixed``.
      Groups come from the tags (PatientID / StudyInstanceUID), not from folders.
    - ``liver_volumes/<patient>/*.nii.gz`` (96 slices) and one ``*.nii`` (64): (H, W, S) uint8.
    - ``fetal_video/<patient>/*.mp4``: 40-frame sweeps (H.264 when available).
    - ``kidney_mixed/<patient>/renal_N.png``: a few more stills.
    - ``broken/``: empty.png, truncated.png, notes.png (text), random.dcm (noise), nopixels.dcm.
    """
    out = Path(out)
    pats = _patients(patient_name, seed)
    summary: dict[str, dict] = {}
    # Patients are drawn from one stream in this order, and each writer seeds its own generators:
    # reordering the datasets renames patients (and so changes every file).
    summary["breast_png"] = _write_breast(out / "breast_png", seed, pats, _n(6, scale))
    summary["thyroid_jpg"] = _write_thyroid(out / "thyroid_jpg", seed, pats, _n(3, scale))
    kid_pat = next(pats)
    kid0 = _kidney_still(seed, kid_pat, 0)
    counts = (_n(2, scale), _n(1, scale), _n(1, scale))  # mono, Doppler, RLE cines
    summary["cardiac_dicom"] = _write_cardiac(out / "cardiac_dicom", seed, pats, counts, kid0, kid_pat)
    summary["liver_volumes"] = _write_liver(out / "liver_volumes", seed, pats, _n(3, scale))
    summary["fetal_video"] = _write_fetal(out / "fetal_video", seed, pats, _n(2, scale))
    n_kidney = max(1, _n(6, scale) // 3)
    summary["kidney_mixed"] = _write_kidney(out / "kidney_mixed", seed, pats, n_kidney, kid0, kid_pat)
    summary["broken"] = _write_broken(out / "broken", seed, pats)
    for name, s in summary.items():
        s["bytes"] = _bytes_under(out / name)
    return summary
