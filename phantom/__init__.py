"""Synthetic ultrasound ("phantom") generator: demo and test data for the whole system, not product code.

It renders B-mode frames that look like scanner output -- a sector/linear/curved footprint on black,
burned-in banner text, depth ticks, grey bar, ECG trace, calipers, colour-Doppler boxes -- and writes
small raw collections in the formats real archives hold (PNG/JPEG/BMP/TIFF stills, multi-frame DICOM
cine loops, NIfTI volumes, MP4 videos, broken files), plus a labelled lesion task for fine-tuning.

Modules, in the order a frame is made and written:

- ``geometry``: probe footprints on the screen and the beam-space grid.
- ``tissue``: tissue maps (echo, attenuation, flow) and the soft shapes painters use.
- ``anatomy``: the six anatomies (layout, motion, painter); ``lesion``: focal lesions.
- ``signal_chain``: scatterers, PSF, attenuation/TGC, log compression, scan conversion.
- ``overlays``: banner, depth scale, ECG, calipers, colour Doppler.
- ``render``: ``render_frame``, which runs all of the above for one frame.
- ``patients``: synthetic patients (the PHI the sharder must drop) and DICOM UIDs.
- ``stills``, ``dicom``, ``nifti``, ``video``, ``broken``: one writer per dataset format.
- ``corpus``: ``write_demo_corpus`` (which datasets, how many files); ``downstream``:
  ``write_downstream_task`` (the labelled lesion task).

Everything is deterministic from a ``numpy.random.Generator`` (no global RNG). Names with a leading
underscore are shared between these modules only; the package exports the API below. Nothing in
``sharder``, ``dali_pipes`` or ``trainer`` imports it at module level (``usf-shard demo`` does lazily).
"""

from .anatomy import ANATOMIES
from .corpus import write_demo_corpus
from .dicom import US_MULTIFRAME_SOP
from .downstream import write_downstream_task
from .geometry import PROBES, probe_geometry
from .lesion import Lesion
from .render import render_frame

__all__ = [
    "ANATOMIES",
    "PROBES",
    "US_MULTIFRAME_SOP",
    "Lesion",
    "probe_geometry",
    "render_frame",
    "write_demo_corpus",
    "write_downstream_task",
]
