"""Readers: turn one input file into a stream of 2D :class:`~sharder.frames.Frame` objects.

One module per format (``image``, ``dicom``, ``volume``, ``video``), one detection table
(``detect``), what every reader hands out (``pixels``) and how libraries are called (``guard``).

Public API
----------
``detect_format(path) -> "image" | "dicom" | "volume" | "video" | None``
    Content first (magic bytes), file extension second.
``iter_frames(path, fmt, opts) -> Iterator[Frame]``
    Streams one frame at a time; anything unusable raises :class:`InputRejected`.
``read_group_hint(path) -> str | None``
    The raw study/patient identifier of a DICOM file (header only), ``None`` otherwise.
``image_format(head) -> "png" | "jpeg" | ... | None``
    The still-image format a file's first bytes announce.

What comes out (``Frame.pixels``): ``(H, W)`` gray in its native dtype (uint8, uint16, int16 or
float32; other integer/float types are narrowed to one of these) or ``(H, W, 3)`` uint8 RGB.

Rejection reasons (``InputRejected.reason``): ``empty_file``, ``unreadable``, ``unknown_format``,
``truncated``, ``undecodable``, ``no_pixel_data``, ``too_large`` (checked from the header before
any pixel is decoded), ``non_finite``, ``unsupported``.  Frames yielded before a rejection are
valid; a caller that wants all-or-nothing must buffer them itself.

Privacy: no ``detail`` sentence, log record or ``Frame.info`` built here contains a file name, a
path or a DICOM tag value.  Library exception messages often do (PIL, SimpleITK and FFmpeg name
the file, pydicom quotes element values), so they are never passed on; only fixed sentences and
exception class names are.  Warnings and log records that the libraries emit while we call them
are dropped for the same reason (see :mod:`sharder.readers.guard`).
"""
from .detect import FORMATS, detect_format, image_format
from .dicom import read_group_hint
from .dispatch import iter_frames

__all__ = ["FORMATS", "detect_format", "image_format", "iter_frames", "read_group_hint"]
