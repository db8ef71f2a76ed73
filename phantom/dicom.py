"""DICOM dataset of the demo corpus: Ultrasound Multi-frame Image Storage cine loops (MONOCHROME2,
RGB Doppler, RLE Lossless), a JPEG 2000 still and a cross-dataset duplicate, with scanner regions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .geometry import probe_geometry, ProbeGeometry
from .patients import _Patient, _uid
from .render import render_frame

US_MULTIFRAME_SOP = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage


def _dicom(pat: _Patient, frames: np.ndarray, g: ProbeGeometry, *, series: int, fps: float, desc: str):
    """Ultrasound Multi-frame Image Storage dataset for (F, H, W) or (F, H, W, 3) uint8 ``frames``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    sop = _uid(pat.seed, "sop", series)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME_SOP
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = US_MULTIFRAME_SOP, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = pat.study_uid, _uid(pat.seed, "series", series)
    ds.PatientName, ds.PatientID = pat.name, pat.pid
    ds.PatientBirthDate, ds.PatientSex = f"19{50 + pat.seed % 45:02d}0101", "FM"[pat.seed % 2]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = pat.study_date
    ds.StudyTime = ds.ContentTime = f"{9 + series % 8:02d}{(pat.seed * 7) % 60:02d}00"
    ds.InstitutionName, ds.ReferringPhysicianName = pat.institution, "REF^DOCTOR"
    ds.AccessionNumber, ds.StudyID = f"ACC{pat.seed:07d}", "1"
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "US", "PHANTOM", "usf-mae phantom"
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = series, 1, desc
    n, h, w = frames.shape[:3]
    rgb = frames.ndim == 4
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns, ds.NumberOfFrames = h, w, n
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime, ds.CineRate, ds.FrameIncrementPointer = f"{1000.0 / fps:.1f}", int(fps), 0x00181063
    region = Dataset()  # where the image lives on screen: real scanners write this, croppers use it
    x0, y0, x1, y1 = g.bbox()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = max(0, x0), y0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = min(w, x1) - 1, y1 - 1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = g.depth_cm / g.depth_px
    ds.SequenceOfUltrasoundRegions = [region]
    ds.BurnedInAnnotation = "YES"
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    return ds


def _cine(seed_parts, pat: _Patient, n: int, h: int, w: int, doppler: bool) -> np.ndarray:
    """(n, h, w[, 3]) uint8 cardiac loop covering one heart beat."""
    rng = np.random.default_rng(seed_parts)
    banner = f"{pat.name}  {pat.institution}  ECHO"
    return np.stack([
        render_frame(rng, height=h, width=w, probe="sector", anatomy="cardiac", phase=i / n, banner=banner,
                     doppler=doppler, ecg=True, scene_seed=pat.seed * 10 + 3)
        for i in range(n)
    ])


def _write_cardiac(
    root: Path,
    seed: int,
    pats: Iterator[_Patient],
    counts: tuple[int, int, int],
    xdup: np.ndarray,
    xdup_pat: _Patient,
) -> dict:
    """Multi-frame DICOM cine loops (``counts``: how many mono, RGB Doppler, RLE), a J2K still, and
    ``xdup`` (also a PNG of ``xdup_pat`` in kidney_mixed/) as a cross-dataset duplicate."""
    from pydicom.pixels.encoders import JPEG2000LosslessEncoder
    from pydicom.uid import JPEG2000Lossless, RLELossless

    root.mkdir(parents=True, exist_ok=True)
    files, frames, syntaxes = 0, 0, {}

    def save(ds, name: str) -> None:
        nonlocal files, frames
        ds.save_as(root / name, enforce_file_format=True)
        files += 1
        frames += int(ds.NumberOfFrames)
        syntaxes[name] = str(ds.file_meta.TransferSyntaxUID)

    n_mono, n_doppler, n_rle = counts
    g = probe_geometry("sector", 384, 512)
    for i in range(n_mono):
        pat = next(pats)
        n = (20, 26)[i % 2]
        save(
            _dicom(pat, _cine([seed, 3, i], pat, n, 384, 512, False), g, series=1, fps=25, desc="A4C cine"),
            f"{pat.pid}_cine_{i + 1:02d}.dcm",
        )
    for i in range(n_doppler):
        pat = next(pats)
        fr = _cine([seed, 4, i], pat, 16, 288, 384, True)
        save(
            _dicom(pat, fr, probe_geometry("sector", 288, 384), series=2, fps=20, desc="A4C colour"),
            f"{pat.pid}_doppler_{i + 1:02d}.dcm",
        )
    for i in range(n_rle):
        pat = next(pats)
        ds = _dicom(pat, _cine([seed, 5, i], pat, 24, 384, 512, False), g, series=3, fps=30, desc="A4C RLE")
        ds.compress(RLELossless, generate_instance_uid=False)
        save(ds, f"{pat.pid}_rle_{i + 1:02d}.dcm")
    pat = next(pats)
    still = _cine([seed, 6], pat, 1, 480, 640, False)
    ds = _dicom(pat, still, probe_geometry("sector", 480, 640), series=4, fps=1, desc="A4C still")
    if JPEG2000LosslessEncoder.is_available:  # needs pylibjpeg-openjpeg (or gdcm); else one file fewer
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
        save(ds, f"{pat.pid}_j2k.dcm")
    pat = xdup_pat  # the same pixels also sit in kidney_mixed/ as a PNG: cross-dataset duplicate
    save(
        _dicom(pat, xdup[None], probe_geometry("curved", *xdup.shape), series=5, fps=1, desc="renal"),
        f"{pat.pid}_export.dcm",
    )
    return {"files": files, "frames": frames, "anatomy": "cardiac", "patients": files,
            "transfer_syntaxes": syntaxes, "cross_duplicate": f"{pat.pid}_export.dcm"}
