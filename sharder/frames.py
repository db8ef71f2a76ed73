"""Types shared by the sharder's stages: a decoded frame, reader options, and the errors that
turn a bad input into a line of ``rejects.jsonl`` instead of a crashed build.

Nothing here may carry patient data onward: ``Frame.group_hint`` holds a raw identifier
(e.g. a DICOM StudyInstanceUID) only so the build can salt-hash it; it is never written.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """One 2D frame as a reader produced it, before curation.

    pixels: (H, W) gray (uint8, uint16, int16, float32...) or (H, W, 3) RGB uint8.
    index: frame index in a cine/video, slice index in a volume, 0 for a still image.
    axis: volume axis the slice was cut along (0, 1, 2), None for 2D sources.
    group_hint: raw patient/study identifier from the file (hashed by the caller, never stored).
    regions, n_frames: integers only (never tag text): crop regions and the source's frame count.
    """

    pixels: np.ndarray
    index: int = 0
    axis: int | None = None
    group_hint: str | None = None
    info: dict = field(default_factory=dict)  # reader notes, e.g. {"photometric": "YBR_FULL_422"}
    # the scanner's image regions (DICOM SequenceOfUltrasoundRegions) as lists of 6 ints
    # [y0, x0, y1, x1, spatial format, data type], end-exclusive (see sharder/regions.py)
    regions: list = field(default_factory=list)
    n_frames: int | None = None  # frames the reader will yield for this source, when it knows


@dataclass
class ReaderOptions:
    """Per-dataset reading options (from the curation config)."""

    frame_stride: int = 1  # keep every n-th frame of a cine loop / video
    max_frames: int | None = None  # cap frames per source (None: all)
    volume_axes: tuple[int, ...] = (2,)  # axes to slice volumes along
    slice_stride: int = 1
    max_pixels: int = 64_000_000  # decompression-bomb guard, per frame (H*W)


class InputRejected(Exception):
    """A whole input or one frame cannot be used. ``reason`` is a short machine-friendly code,
    ``detail`` a sentence for a person. Neither may contain tag values or file names."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
