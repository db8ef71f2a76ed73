"""Still images (PNG, JPEG, BMP, TIFF, GIF, WebP, JPEG 2000, PNM ...): PIL first, OpenCV for
what PIL cannot decode."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..frames import Frame, InputRejected, ReaderOptions
from .guard import guard
from .pixels import check_size, frame_pixels, native

def _pil() -> Any:
    """The PIL.Image module, with PIL's own bomb guard off (see below)."""
    from PIL import Image

    # The decompression-bomb guard is ours (ReaderOptions.max_pixels -> "too_large", checked on
    # the header).  PIL's own guard would warn or raise with its own limit, and its message
    # names the file, so it is switched off for this process.
    Image.MAX_IMAGE_PIXELS = None
    return Image


def _pil_array(im: Any) -> np.ndarray:
    """Decode the current PIL frame to (H, W) native gray or (H, W, 3) uint8 RGB.

    Palette (P/PA), CMYK, YCbCr, LAB, HSV and RGBA are converted to RGB (alpha dropped); LA and
    bilevel to 8-bit gray; I;16* stay uint16, I (int32) is narrowed, F stays float32.
    """
    mode = im.mode
    if mode in ("L", "RGB"):
        return np.asarray(im)
    if mode in ("1", "LA", "La"):
        return np.asarray(im.convert("L"))
    if mode.startswith("I;16"):
        return native(np.asarray(im)).astype(np.uint16, copy=False)
    if mode in ("I", "F"):
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def _pil_error(exc: Exception) -> InputRejected:
    """PIL reports a cut-off file as OSError("image file is truncated ...", "truncated PNG
    file", ...) or EOFError.  Only UnidentifiedImageError quotes the path, so a directory
    called "truncated" cannot fool this."""
    from PIL import UnidentifiedImageError

    cut = isinstance(exc, EOFError) or (
        not isinstance(exc, UnidentifiedImageError) and "truncated" in str(exc).lower())
    if cut:
        return InputRejected("truncated", "The image data ends before the image is complete.")
    return InputRejected("undecodable", f"The image could not be decoded ({type(exc).__name__}).")


def iter_image(path: Path, opts: ReaderOptions) -> Iterator[Frame]:
    """PNG/JPEG/BMP/TIFF/GIF/WebP/JPEG 2000 ... one Frame per page (multi-page TIFF, GIF),
    honouring ``frame_stride``.  PIL first; OpenCV when PIL cannot decode at all (e.g. float
    or exotic 16-bit colour TIFFs)."""
    image_mod = _pil()
    try:
        with guard(_pil_error):
            im = image_mod.open(path)  # reads the header only
    except InputRejected as rejection:
        yield from _iter_image_cv2(path, opts, rejection)
        return
    with im:
        check_size(im.height, im.width, opts)
        with guard(_pil_error):
            n_pages = getattr(im, "n_frames", 1)
        for n, page in enumerate(range(0, n_pages, opts.frame_stride)):
            try:
                with guard(_pil_error):
                    im.seek(page)
                    check_size(im.height, im.width, opts)
                    im.load()
                    arr = _pil_array(im)
            except InputRejected as rejection:
                if n or rejection.reason != "undecodable":
                    raise
                yield from _iter_image_cv2(path, opts, rejection)
                return
            yield Frame(frame_pixels(arr), index=page, info={"mode": im.mode})


def _iter_image_cv2(path: Path, opts: ReaderOptions, pil_rejection: InputRejected) -> Iterator[Frame]:
    """OpenCV fallback for files PIL cannot decode.  The bytes are handed over in memory
    (``imdecodemulti``) so that OpenCV's own log lines cannot name the file.  OpenCV has no
    header-only API, so the size check runs after decoding, under OpenCV's own 2^30-pixel cap.
    If OpenCV cannot decode the file either, PIL's verdict (``pil_rejection``) stands."""
    import cv2

    buf = np.fromfile(path, dtype=np.uint8)
    cv_log = cv2.utils.logging
    level = cv_log.getLogLevel()
    cv_log.setLogLevel(cv_log.LOG_LEVEL_SILENT)  # libtiff/libpng complaints go straight to stderr
    try:
        ok, pages = cv2.imdecodemulti(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        ok, pages = False, []
    finally:
        cv_log.setLogLevel(level)
    if not ok or not pages:
        raise pil_rejection
    for page in range(0, len(pages), opts.frame_stride):
        arr = pages[page]
        check_size(arr.shape[0], arr.shape[1], opts)
        if arr.ndim == 3 and arr.shape[2] >= 3:
            arr = arr[..., 2::-1]  # BGR(A) -> RGB
        yield Frame(frame_pixels(arr), index=page, info={"decoder": "opencv"})

