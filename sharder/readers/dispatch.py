"""The entry point: one input file -> its 2D frames, through the reader of its format."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..frames import Frame, InputRejected, ReaderOptions
from .dicom import iter_dicom
from .image import iter_image
from .video import iter_video
from .volume import iter_volume

_READERS: dict[str, Callable[[Path, ReaderOptions], Iterator[Frame]]] = {
    "image": iter_image,
    "dicom": iter_dicom,
    "volume": iter_volume,
    "video": iter_video,
}


def _check_readable(path: Path) -> None:
    """Reject missing, unreadable and zero-byte files before any library sees them."""
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except OSError as exc:
        raise InputRejected("unreadable", f"The file cannot be opened ({type(exc).__name__}).") from None
    if size == 0:
        raise InputRejected("empty_file", "The file is empty.")


def _check_options(opts: ReaderOptions) -> None:
    if opts.frame_stride < 1 or opts.slice_stride < 1:
        raise ValueError("frame_stride and slice_stride must be >= 1")
    if opts.max_frames is not None and opts.max_frames < 0:
        raise ValueError("max_frames must be >= 0 or None")
    if not opts.volume_axes or any(a not in (0, 1, 2) for a in opts.volume_axes):
        raise ValueError(f"volume_axes must be a non-empty subset of (0, 1, 2), got {opts.volume_axes}")


def iter_frames(path: str | os.PathLike[str], fmt: str | None,
                opts: ReaderOptions | None = None) -> Iterator[Frame]:
    """Yield the 2D frames of one input, one at a time.

    path: the input file.  fmt: as returned by :func:`detect_format` (``None`` -> rejected as
    ``unknown_format``).  opts: stride/limit/bomb-guard options (defaults if None).

    ``opts.max_frames`` caps the number of frames yielded per source (cine frames, volume
    slices over all axes, video frames); decoding stops as soon as the cap is reached.
    Raises :class:`InputRejected` for unusable input (possibly after some valid frames) and
    ``ValueError`` for invalid options.
    """
    path = Path(path)
    opts = opts or ReaderOptions()
    _check_options(opts)
    _check_readable(path)
    reader = _READERS.get(fmt or "")
    if reader is None:
        raise InputRejected("unknown_format", "The file format is not recognised.")
    if opts.max_frames == 0:
        return
    frames = reader(path, opts)
    try:
        for n, frame in enumerate(frames, start=1):
            yield frame
            if opts.max_frames is not None and n >= opts.max_frames:
                break
    finally:
        frames.close()  # releases files/containers now, not at garbage collection
