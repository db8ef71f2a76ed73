"""Synthetic patients and their DICOM UIDs. Names, IDs and institutions are deliberately burned into
banners, folder names and DICOM tags: they are the PHI the sharder must never carry into shards."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's example root: fine for synthetic data


@dataclass
class _Patient:
    """A synthetic patient. ``name`` appears in folder names, banners and DICOM tags on purpose:
    it is the PHI the sharder must never carry into shards."""

    name: str  # DICOM PN, e.g. "DEMO^PATIENT_001"
    pid: str  # PatientID
    seed: int
    institution: str
    study_date: str  # YYYYMMDD

    @property
    def study_uid(self) -> str:
        return _uid(self.seed, "study", self.pid)


_INSTITUTIONS = ("ST ELSEWHERE HOSPITAL", "GENERAL INFIRMARY", "CITY WOMENS CLINIC", "NORTH IMAGING CTR")


def _patients(patient_name: str, seed: int) -> Iterator[_Patient]:
    """Endless stream of patients DEMO^PATIENT_001, _002, ... (deterministic from ``seed``)."""
    i = 0
    while True:
        i += 1
        r = np.random.default_rng([seed, 0xBA7, i])
        date = f"{int(r.integers(2016, 2025)):04d}{int(r.integers(1, 13)):02d}{int(r.integers(1, 29)):02d}"
        yield _Patient(
            f"{patient_name}_{i:03d}",
            f"PID{seed % 100:02d}{i:04d}",
            seed * 1000 + i,
            _INSTITUTIONS[int(r.integers(len(_INSTITUTIONS)))],
            date,
        )


def _uid(*parts) -> str:
    from pydicom.uid import generate_uid  # optional dependency: only the DICOM writers need it

    return generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(p) for p in parts])
