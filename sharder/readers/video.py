"""Video files (MP4, AVI, MKV, MPEG ...) through PyAV; also decodes the MPEG-family elementary
streams that DICOM cines encapsulate (:mod:`sharder.readers.dicom`)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..frames import Frame, InputRejected, ReaderOptions
from .guard import DONE, guard, next_or_done, undecodable
from .pixels import check_size, frame_pixels

def iter_av(source: Any, opts: ReaderOptions, demuxer: str | None = None,
             group_hint: str | None = None, info: dict | None = None) -> Iterator[Frame]:
    """Decode the first video stream frame by frame: (H, W) uint8 for gray pixel formats,
    (H, W, 3) uint8 RGB otherwise.  Every ``frame_stride``-th decoded frame is kept (all
    frames must be decoded anyway: inter-coded frames depend on their predecessors).
    ``source`` is an open binary file object, so FFmpeg never sees the path."""
    import av

    error = undecodable("The video could not be decoded")
    with guard(error):
        container = av.open(source, mode="r", format=demuxer)
    with container:
        if not container.streams.video:
            raise InputRejected("no_pixel_data", "The container has no video stream.")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx.width and ctx.height:  # raw elementary streams may only know after decoding
            check_size(ctx.height, ctx.width, opts)
        pix_fmt = str(getattr(ctx, "pix_fmt", "") or "")
        out_format = "gray" if pix_fmt.startswith(("gray", "ya")) else "rgb24"
        # DICOM cines keep their DICOM notes only; plain videos note the codec.
        notes = dict(info) if info is not None else {"codec": ctx.name}
        decoded = container.decode(stream)
        n = 0
        while (frame := next_or_done(decoded, error)) is not DONE:
            if n % opts.frame_stride == 0:
                check_size(frame.height, frame.width, opts)  # streams may change resolution
                with guard(error):
                    arr = frame.to_ndarray(format=out_format)
                yield Frame(frame_pixels(arr), index=n, group_hint=group_hint, info=dict(notes))
            n += 1
        if n == 0:
            raise InputRejected("no_pixel_data", "The video stream has no decodable frame.")


def iter_video(path: Path, opts: ReaderOptions) -> Iterator[Frame]:
    with path.open("rb") as f:
        yield from iter_av(f, opts)

