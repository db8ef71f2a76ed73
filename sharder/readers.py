"""Readers: turn one input file into a stream of 2D :class:`~sharder.frames.Frame` objects.

Public API
----------
``detect_format(path) -> "image" | "dicom" | "volume" | "video" | None``
    Content first (magic bytes), file extension second.
``iter_frames(path, fmt, opts) -> Iterator[Frame]``
    Streams one frame at a time; anything unusable raises :class:`InputRejected`.
``read_group_hint(path) -> str | None``
    The raw study/patient identifier of a DICOM file (header only), ``None`` otherwise.

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
are dropped for the same reason (see :func:`_quiet`).
"""
from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import mmap
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .frames import Frame, InputRejected, ReaderOptions

__all__ = ["FORMATS", "detect_format", "iter_frames", "read_group_hint"]

FORMATS = ("image", "dicom", "volume", "video")

# A volume that has to be held in memory whole (SimpleITK reads, or a gzip-compressed NIfTI
# sliced along an axis other than the last) may hold at most this many voxels (x components).
# 512 Mi voxels is e.g. 800^3 or a 1024^2 x 512 stack: big enough for any ultrasound volume,
# small enough that a forged header cannot make one worker allocate tens of gigabytes.
MAX_VOLUME_VOXELS = 1 << 29

# --------------------------------------------------------------------------------------------
# Quietening third-party libraries (privacy)
# --------------------------------------------------------------------------------------------

_QUIET = threading.local()
_QUIET_LOGGERS = ("pydicom", "nibabel", "PIL", "libav", "av")


class _DropWhileQuiet(logging.Filter):
    """Drops every record of a third-party logger while this thread is inside :func:`_quiet`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_QUIET, "depth", 0)


_DROP_FILTER = _DropWhileQuiet()
_filtered_count = -1


def _filter_library_loggers() -> None:
    """Attach the drop filter to every logger of the quietened libraries.  A logger's filters
    do not see records that propagate up from its children (pydicom logs decoder failures on
    ``pydicom.pixels.decoders.base``), so each (lazily created) child needs its own; the logger
    registry is rescanned only when it has grown."""
    global _filtered_count
    registry = logging.root.manager.loggerDict
    if len(registry) == _filtered_count:
        return
    names = [n for n in list(registry) if n.split(".")[0] in _QUIET_LOGGERS] + list(_QUIET_LOGGERS)
    for name in names:
        logger = logging.getLogger(name)
        if _DROP_FILTER not in logger.filters:
            logger.addFilter(_DROP_FILTER)
    _filtered_count = len(registry)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence library warnings and log records around one library call.

    pydicom's warnings quote element values and file names ("... in file /x/y.dcm"), PIL's and
    nibabel's can carry paths; none of them may reach a log.  Used around calls only, never
    around a ``yield``, so the caller's own warnings are untouched between frames.
    """
    _filter_library_loggers()
    _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _QUIET.depth -= 1


def _undecodable(what: str) -> Callable[[Exception], InputRejected]:
    """Classifier for :func:`_guard`: every failure is "undecodable", described by ``what``."""
    return lambda exc: InputRejected("undecodable", f"{what} ({type(exc).__name__}).")


@contextlib.contextmanager
def _guard(classify: Callable[[Exception], InputRejected]) -> Iterator[None]:
    """Run library code quietly; any exception it raises becomes ``classify(exc)``.

    Decoders fail in many ways (OSError, ValueError, RuntimeError, struct.error, FFmpegError,
    ...) and every one of them means "this input is unusable", so they are caught broadly.
    Their messages are never passed on: they name files and quote tag values.
    """
    try:
        with _quiet():
            yield
    except (InputRejected, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - see docstring
        raise classify(exc) from None


_DONE = object()


def _next(it: Iterator[Any], classify: Callable[[Exception], InputRejected]) -> Any:
    """``next(it)`` under :func:`_guard`; returns ``_DONE`` when the iterator is exhausted."""
    with _guard(classify):
        return next(it, _DONE)


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------

_HEAD_BYTES = 1024

_EXTENSIONS = {
    "image": (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".gif",
              ".webp", ".jp2", ".j2k", ".jpx", ".pgm", ".ppm", ".pnm", ".pbm"),
    "dicom": (".dcm", ".dicom", ".dic", ".ima"),
    "volume": (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"),
    "video": (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
              ".ogv", ".mts", ".m2ts", ".3gp"),
}

# ISO-BMFF brands that are still images (AVIF/HEIF), not movies.
_IMAGE_BRANDS = {b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1"}
# QuickTime files without an 'ftyp' box start with one of these atoms.
_QT_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
_BMP_DIB_SIZES = {12, 40, 52, 56, 64, 108, 124}
_METAIMAGE_KEY = re.compile(
    rb"^\s*(ObjectType|NDims|DimSize|ElementType|ElementDataFile)\s*=", re.MULTILINE
)
_DICOM_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}


def _read_head(path: Path, n: int = _HEAD_BYTES) -> bytes:
    """First ``n`` bytes of the file, ``b""`` if it cannot be read (detection then falls back
    to the extension; :func:`iter_frames` reports the real problem)."""
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _is_nifti_header(head: bytes) -> bool:
    """NIfTI-1 (348-byte header, magic at 344) or NIfTI-2 (540 bytes, magic at 4)."""
    if len(head) >= 348 and head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        return head[344:348] in (b"n+1\x00", b"ni1\x00")
    if len(head) >= 12 and head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return head[4:8] in (b"n+2\x00", b"ni2\x00")
    return False


def _gunzip_head(path: Path, n: int = 544) -> bytes:
    """First ``n`` decompressed bytes of a gzip file (``b""`` if it is not valid gzip)."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, ValueError):
        return b""


def _looks_like_raw_dicom(head: bytes) -> bool:
    """A DICOM stream without the 128-byte preamble: starts with a group 0x0002 or 0x0008
    element in little-endian explicit VR (valid VR code) or implicit VR (small length)."""
    if len(head) < 8 or head[:2] not in (b"\x02\x00", b"\x08\x00") or head[3] != 0:
        return False
    if head[4:6] in _DICOM_VRS:
        return True
    return int.from_bytes(head[4:8], "little") < 256


def _format_from_magic(head: bytes, path: Path) -> str | None:
    """The format that the first bytes of the file announce, or None."""
    if head[128:132] == b"DICM":
        # First: some DICOM writers fill the 128-byte preamble with a TIFF header so that the
        # file is both a TIFF and a DICOM; the DICOM dataset is the authoritative content.
        return "dicom"
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a",
                        b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+",
                        b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "image"
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head.startswith(b"NRRD000"):
        return "volume"
    if _is_nifti_header(head):
        return "volume"
    if head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") and path.suffix.lower() == ".hdr":
        return "volume"  # Analyze 7.5 header (no magic string), paired with an .img file
    if head[:2] == b"\x1f\x8b":
        return "volume" if _is_nifti_header(_gunzip_head(path)) else None
    if len(_METAIMAGE_KEY.findall(head)) >= 2:
        return "volume"  # MetaImage (.mha / .mhd) text header
    if head[4:8] == b"ftyp":
        return "image" if head[8:12] in _IMAGE_BRANDS else "video"
    if head[4:8] in _QT_ATOMS:
        return "video"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if head.startswith((b"\x1a\x45\xdf\xa3", b"FLV\x01", b"\x30\x26\xb2\x75\x8e\x66\xcf\x11",
                        b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", b"OggS")):
        return "video"  # Matroska/WebM, FLV, ASF/WMV, MPEG-PS, MPEG-1/2 ES, Ogg
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "video"  # MPEG transport stream: a sync byte every 188 bytes
    return None


def _format_from_extension(path: Path) -> str | None:
    name = path.name.lower()
    for fmt, exts in _EXTENSIONS.items():
        if name.endswith(exts):
            return fmt
    return None


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """Return ``"image"``, ``"dicom"``, ``"volume"``, ``"video"`` or ``None`` (unknown).

    Magic bytes decide first, so a PNG named ``.jpg`` or a DICOM without extension is still
    found; the extension is the fallback (e.g. DICOM without preamble, empty files); a
    preamble-less DICOM without a known extension is recognised by its first element last.
    """
    path = Path(path)
    head = _read_head(path)
    fmt = _format_from_magic(head, path) or _format_from_extension(path)
    if fmt is None and _looks_like_raw_dicom(head):
        fmt = "dicom"
    return fmt


# --------------------------------------------------------------------------------------------
# Shared pixel helpers
# --------------------------------------------------------------------------------------------


def _check_size(height: int, width: int, opts: ReaderOptions) -> None:
    """Decompression-bomb guard, called with header dimensions before decoding."""
    if height <= 0 or width <= 0:
        raise InputRejected("undecodable", "The header declares an empty image.")
    if height * width > opts.max_pixels:
        raise InputRejected(
            "too_large",
            f"A frame of {height}x{width} pixels exceeds the limit of {opts.max_pixels} pixels.",
        )


def _native(arr: np.ndarray) -> np.ndarray:
    """Same values in native byte order (big-endian DICOM/NIfTI data arrives as '>u2' etc.)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _narrow_int(arr: np.ndarray) -> np.ndarray:
    """Wide/odd integer gray -> uint16 or int16 when the values fit, float32 otherwise."""
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo >= 0 and hi <= 0xFFFF:
        return arr.astype(np.uint16)
    if lo >= -0x8000 and hi <= 0x7FFF:
        return arr.astype(np.int16)
    return arr.astype(np.float32)


def _gray_pixels(arr: np.ndarray) -> np.ndarray:
    """(H, W) any numeric dtype -> (H, W) uint8 | uint16 | int16 | float32; rejects NaN/inf."""
    arr = _native(arr)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * np.uint8(255)
    elif arr.dtype == np.int8:
        arr = arr.astype(np.int16)
    elif arr.dtype.kind in "iu" and arr.dtype not in (np.uint8, np.uint16, np.int16):
        arr = _narrow_int(arr)
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise InputRejected("non_finite", "The pixel data contains NaN or infinite values.")
    elif arr.dtype.kind not in "iu":
        raise InputRejected("unsupported", f"Pixel type {arr.dtype.kind!r} is not supported.")
    return np.require(arr, requirements="CW")  # PIL hands out read-only arrays


def _rgb_pixels(arr: np.ndarray, bits: int | None = None) -> np.ndarray:
    """(H, W, 3|4) -> (H, W, 3) uint8, C-ordered.  Integers keep their top 8 significant bits
    (``bits``: significant bits per sample, default the dtype width); floats are taken as 0..1
    if they stay within it, else as 0..255, and clipped."""
    arr = _native(arr)[..., :3]
    if arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        bits = bits or arr.dtype.itemsize * 8
        shifted = np.right_shift(np.clip(arr, 0, None).astype(np.uint64), max(bits - 8, 0))
        arr = np.clip(shifted, 0, 255).astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputRejected("non_finite", "The pixel data contains NaN or infinite values.")
        scale = 255.0 if arr.size and float(arr.max()) <= 1.0 else 1.0
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InputRejected("unsupported", f"Colour pixel type {arr.dtype.kind!r} is not supported.")
    # Planar-configured DICOM and channel slices come out strided: hand over a plain array.
    return np.require(arr, requirements="CW")


def _pixels(arr: np.ndarray) -> np.ndarray:
    """Dispatch on shape: (H, W) gray, (H, W, C>=3) colour, (H, W, 1) gray."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return _gray_pixels(arr)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return _rgb_pixels(arr)
    raise InputRejected("unsupported", f"Frames of {arr.ndim} dimensions / {arr.shape[-1]} channels "
                                       "are not supported.")


# --------------------------------------------------------------------------------------------
# Still images (PIL, OpenCV fallback)
# --------------------------------------------------------------------------------------------


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
        return _native(np.asarray(im)).astype(np.uint16, copy=False)
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


def _iter_image(path: Path, opts: ReaderOptions) -> Iterator[Frame]:
    """PNG/JPEG/BMP/TIFF/GIF/WebP/JPEG 2000 ... one Frame per page (multi-page TIFF, GIF),
    honouring ``frame_stride``.  PIL first; OpenCV when PIL cannot decode at all (e.g. float
    or exotic 16-bit colour TIFFs)."""
    image_mod = _pil()
    try:
        with _guard(_pil_error):
            im = image_mod.open(path)  # reads the header only
    except InputRejected as rejection:
        yield from _iter_image_cv2(path, opts, rejection)
        return
    with im:
        _check_size(im.height, im.width, opts)
        with _guard(_pil_error):
            n_pages = getattr(im, "n_frames", 1)
        for n, page in enumerate(range(0, n_pages, opts.frame_stride)):
            try:
                with _guard(_pil_error):
                    im.seek(page)
                    _check_size(im.height, im.width, opts)
                    im.load()
                    arr = _pil_array(im)
            except InputRejected as rejection:
                if n or rejection.reason != "undecodable":
                    raise
                yield from _iter_image_cv2(path, opts, rejection)
                return
            yield Frame(_pixels(arr), index=page, info={"mode": im.mode})


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
        _check_size(arr.shape[0], arr.shape[1], opts)
        if arr.ndim == 3 and arr.shape[2] >= 3:
            arr = arr[..., 2::-1]  # BGR(A) -> RGB
        yield Frame(_pixels(arr), index=page, info={"decoder": "opencv"})


# --------------------------------------------------------------------------------------------
# DICOM (pydicom 3 + pylibjpeg plugins; PyAV for MPEG-2/H.264/HEVC encapsulated cines)
# --------------------------------------------------------------------------------------------

_DICOM_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}
# Frame.info only ever repeats one of these (a malformed file could put any text there).
_DICOM_PHOTOMETRIC = _DICOM_COLOUR | {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "YBR_PARTIAL_420",
                                      "YBR_PARTIAL_422", "ARGB", "CMYK", "HSV"}
_DICOM_IDENTITY_TAGS = ("SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID",
                        "PatientID", "Rows", "TransferSyntaxUID")


@dataclass
class _DicomHeader:
    """Everything read before the pixel data.  ``ds`` holds tag values: never log it."""

    ds: Any  # pydicom Dataset without pixel data
    tsyntax: Any  # pydicom UID
    has_file_meta: bool
    pixel_pos: int  # offset of the pixel data element tag (or EOF)
    file_size: int
    group_hint: str | None
    info: dict = field(default_factory=dict)
    regions: list = field(default_factory=list)  # SequenceOfUltrasoundRegions, as 6-int lists


def _dicom_number(ds: Any, keyword: str, default: float | None, cast: Callable[[Any], Any]) -> Any:
    """A numeric attribute via ``cast``; malformed, or missing without default -> "undecodable".
    (The detail names the attribute, never its value.)"""
    try:
        with _quiet():
            value = ds.get(keyword, None)
            if value is None or value == "":
                if default is None:
                    raise InputRejected("undecodable", f"The DICOM attribute {keyword} is missing.")
                return default
            return cast(value)
    except (TypeError, ValueError, OverflowError):
        raise InputRejected("undecodable", f"The DICOM attribute {keyword} is not a number.") from None


def _dicom_int(ds: Any, keyword: str, default: int | None = None) -> int:
    return _dicom_number(ds, keyword, default, int)


def _dicom_float(ds: Any, keyword: str, default: float) -> float:
    return _dicom_number(ds, keyword, default, float)


def _dicom_group_hint(ds: Any) -> str | None:
    """StudyInstanceUID, else PatientID, as raw text (hashed by the caller), else None."""
    for keyword in ("StudyInstanceUID", "PatientID"):
        with _quiet(), contextlib.suppress(Exception):
            value = str(ds.get(keyword, "") or "").strip()
            if value:
                return value
    return None


def _last_element_short(ds: Any) -> bool:
    """True when the header's last element has fewer value bytes than its length says, i.e.
    the file was cut inside the header (pydicom reads short values without complaint)."""
    from pydicom.dataelem import RawDataElement

    tags = list(ds.keys())
    if not tags:
        return False
    elem = ds.get_item(tags[-1])
    if not isinstance(elem, RawDataElement) or not isinstance(elem.value, bytes):
        return False  # already converted (e.g. a sequence) or deferred
    return elem.length != 0xFFFFFFFF and len(elem.value) < elem.length


def _convert_elements(ds: Any) -> None:
    """Convert every top-level element now, while pydicom's warnings (which quote values) are
    muted.  A malformed value in an element we never use must not reject the file, so
    conversion failures are ignored here; the elements we do use are validated where they
    are read (:func:`_dicom_int`, :func:`_dicom_float`)."""
    for tag in list(ds.keys()):
        with contextlib.suppress(Exception):
            ds[tag]


def _read_dicom_header(f: io.BufferedReader, file_size: int) -> _DicomHeader:
    """Parse the header up to the pixel data (no pixels read), leaving ``f`` at the pixel data
    element.  Files with the 'DICM' preamble are parsed strictly; others need ``force``, and
    then must contain at least one identifying element to count as DICOM."""
    from pydicom import dcmread
    from pydicom import uid as uids

    f.seek(128)
    has_preamble = f.read(4) == b"DICM"
    f.seek(0)
    with _guard(_undecodable("The DICOM header could not be parsed")):
        ds = dcmread(f, stop_before_pixels=True, force=not has_preamble)
        pixel_pos = f.tell()
        # Before conversion (needs the raw element).  A preamble but no dataset at all means
        # the file was cut inside its file meta information.
        cut_in_header = _last_element_short(ds) or (has_preamble and len(ds) == 0)
        _convert_elements(ds)
        looks_dicom = has_preamble or any(k in ds for k in _DICOM_IDENTITY_TAGS)
    if not looks_dicom:
        raise InputRejected("undecodable", "The file is not a DICOM dataset.")
    if cut_in_header:
        raise InputRejected("truncated", "The DICOM file ends inside its header.")

    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not tsyntax:
        # No file meta: pydicom guessed the encoding while reading; name it for the decoder.
        implicit, little = ds.original_encoding
        tsyntax = (uids.ImplicitVRLittleEndian if implicit else
                   uids.ExplicitVRLittleEndian if little else uids.ExplicitVRBigEndian)
    with _quiet():
        tsyntax = uids.UID(str(tsyntax))
        known_ts = tsyntax.is_transfer_syntax
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    info = {"photometric": photometric if photometric in _DICOM_PHOTOMETRIC else "other",
            "transfer_syntax": tsyntax.name if known_ts else "unknown"}
    return _DicomHeader(ds, tsyntax, bool(meta and meta.get("TransferSyntaxUID")), pixel_pos,
                        file_size, _dicom_group_hint(ds), info, _dicom_regions(ds))


def _dicom_regions(ds: Any) -> list[list[int]]:
    """The scanner's own image regions (integers only: see sharder/regions.py)."""
    from .regions import read_us_regions

    with _quiet(), contextlib.suppress(Exception):
        return [r.as_list() for r in read_us_regions(ds)]
    return []


def _dicom_indices(n_frames: int, opts: ReaderOptions) -> range:
    """Frame indices to decode: every ``frame_stride``-th, at most ``max_frames`` of them."""
    idx = range(0, n_frames, opts.frame_stride)
    return idx if opts.max_frames is None else idx[: opts.max_frames]


def _check_dicom_pixels(hdr: _DicomHeader, opts: ReaderOptions) -> None:
    """Checks on the header alone, in this order: is there an image at all (Rows/Columns and
    a pixel data element), is a frame too large (before anything is read or decoded), and for
    native encodings, is the pixel data as long as the header says."""
    ds = hdr.ds
    if "Rows" in ds and "Columns" in ds and hdr.info["transfer_syntax"] == "unknown":
        # Private or malformed transfer syntax UID (e.g. GE implicit big endian): no decoder.
        raise InputRejected("unsupported", "The transfer syntax is not a known DICOM transfer syntax.")
    # (For deflated files the file offset says nothing; the inflated dataset is checked later.)
    at_eof = hdr.pixel_pos + 8 > hdr.file_size and not hdr.tsyntax.is_deflated
    if "Rows" not in ds or "Columns" not in ds or at_eof:
        raise InputRejected("no_pixel_data", "The DICOM dataset has no pixel data.")
    _check_size(_dicom_int(ds, "Rows"), _dicom_int(ds, "Columns"), opts)
    if hdr.tsyntax.is_encapsulated or hdr.tsyntax.is_deflated:
        return
    # Native encoding: the element's value must be as long as the header says.
    from pydicom.pixels.utils import get_expected_length

    for keyword in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        _dicom_int(ds, keyword)
    _dicom_int(ds, "NumberOfFrames", 1)
    with _guard(_undecodable("The DICOM image attributes are incomplete")):
        expected = int(get_expected_length(ds, "bytes"))
    element_header = 8 if hdr.tsyntax.is_implicit_VR else 12
    if hdr.file_size - hdr.pixel_pos - element_header < expected:
        raise InputRejected("truncated", "The DICOM pixel data is shorter than its header declares.")


class _DicomPixelMapper:
    """Turns one decoded DICOM frame into Frame pixels: palette -> RGB, MONOCHROME1 inversion,
    rescale slope/intercept for gray, colour to 8 bits.  Decoded colour frames are already RGB
    (pydicom converts YBR_FULL/YBR_FULL_422 when ``raw=False``; JPEG/J2K decoders undo their
    own colour transforms)."""

    def __init__(self, ds: Any):
        self.ds = ds
        self.photometric = str(ds.get("PhotometricInterpretation", "") or "").upper()
        self.samples = _dicom_int(ds, "SamplesPerPixel", 1)
        self.bits_stored = _dicom_int(ds, "BitsStored", 0) or _dicom_int(ds, "BitsAllocated", 8)
        self.signed = _dicom_int(ds, "PixelRepresentation", 0) == 1
        self.slope = _dicom_float(ds, "RescaleSlope", 1.0)
        self.intercept = _dicom_float(ds, "RescaleIntercept", 0.0)
        self.lut_shift: int | None = None
        if self.samples == 3 and self.photometric not in _DICOM_COLOUR:
            raise InputRejected("unsupported", "This colour photometric interpretation is not supported.")
        if self.samples not in (1, 3):
            raise InputRejected("unsupported", "Only 1 or 3 samples per pixel are supported.")

    def _palette(self, arr: np.ndarray) -> np.ndarray:
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, self.ds)
        if self.lut_shift is None:
            # 16-bit LUT entries are scaled to 8 bits, unless the LUT only uses 0..255 (some
            # writers declare 16-bit entries but store 8-bit values); decided once per file
            # from the whole LUT so that every frame gets the same mapping.
            desc = self.ds.RedPaletteColorLookupTableDescriptor
            n_entries, first = (int(desc[0]) or 65536), int(desc[1])
            full = apply_color_lut(np.arange(first, first + n_entries).astype(arr.dtype), self.ds)
            self.lut_shift = 8 if full.dtype.itemsize > 1 and int(full.max()) > 255 else 0
        return _rgb_pixels(np.right_shift(rgb, self.lut_shift).astype(np.uint8))

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        arr = _native(arr)
        if self.samples == 3:
            return _rgb_pixels(arr, bits=self.bits_stored)
        if self.photometric == "PALETTE COLOR":
            return self._palette(arr)
        if self.photometric == "MONOCHROME1" and arr.dtype.kind in "iu":
            # MONOCHROME1 shows low values bright; invert the stored values over their full
            # range so that bright = echo, as in MONOCHROME2 (before rescale, dtype kept).
            if self.signed:
                arr = np.invert(arr)  # -1 - x: maps [-2^(b-1), 2^(b-1)-1] onto itself
            else:
                top = (1 << min(self.bits_stored, arr.dtype.itemsize * 8)) - 1
                arr = (top - np.clip(arr, 0, top)).astype(arr.dtype)
        if self.slope != 1.0 or self.intercept != 0.0:
            arr = arr.astype(np.float32) * np.float32(self.slope) + np.float32(self.intercept)
        return _gray_pixels(arr)


_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0, LE


def _has_sequence_delimiter(f: io.BufferedReader, start: int) -> bool:
    """Whether encapsulated pixel data starting at ``start`` is closed by its sequence
    delimiter.  Without it the file was cut short, and a frame that fails to decode is a
    truncated one rather than a corrupt one.  Searched through a memory map, not read."""
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return mm.rfind(_SEQUENCE_DELIMITER, start) != -1


def _truncated_encapsulated(exc: Exception) -> InputRejected:
    return InputRejected("truncated", "The encapsulated DICOM pixel data ends inside a frame.")


def _mpeg_container_format(tsyntax: Any) -> str | None:
    """FFmpeg demuxer for an MPEG family transfer syntax (elementary streams per PS3.5 8.2)."""
    from pydicom.uid import MPEGTransferSyntaxes

    if tsyntax not in MPEGTransferSyntaxes:
        return None
    base = str(tsyntax).removesuffix(".1")
    if base in ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"):
        return "mpeg2video"
    if base in ("1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"):
        return "hevc"
    return "h264"


def _iter_dicom_video(f: io.BufferedReader, hdr: _DicomHeader, demuxer: str,
                      opts: ReaderOptions) -> Iterator[Frame]:
    """Encapsulated MPEG-2 / H.264 / HEVC cine: the fragments form one elementary stream,
    decoded frame by frame with PyAV.  The compressed stream (not the decoded frames) is held
    in memory."""
    from pydicom.encaps import generate_frames
    from pydicom.filereader import read_dataset
    from pydicom.tag import Tag

    with _guard(_undecodable("The encapsulated video could not be read")):
        f.seek(hdr.pixel_pos)
        tail = read_dataset(f, hdr.tsyntax.is_implicit_VR, hdr.tsyntax.is_little_endian,
                            stop_when=lambda tag, vr, length: tag > Tag(0x7FE00010))
        stream = b"".join(generate_frames(tail.PixelData, number_of_frames=1))
    for frame in _iter_av(io.BytesIO(stream), opts, demuxer=demuxer, group_hint=hdr.group_hint,
                          info=hdr.info):
        frame.regions = hdr.regions  # the scanner's regions hold for its encoded cine too
        yield frame


def _iter_dicom(path: Path, opts: ReaderOptions) -> Iterator[Frame]:
    """Single- and multi-frame DICOM, one decoded frame at a time.

    Pixel data is pulled through :func:`pydicom.pixels.iter_pixels` from the open file, so only
    the frames asked for are read and decoded (native, RLE, JPEG, JPEG-LS, JPEG 2000 through
    the pylibjpeg plugins).  Deflated files are inflated whole first (pydicom cannot stream
    them); MPEG-family cines go to PyAV.
    """
    from pydicom.pixels import get_decoder, iter_pixels

    with path.open("rb") as f:
        hdr = _read_dicom_header(f, os.fstat(f.fileno()).st_size)
        _check_dicom_pixels(hdr, opts)
        ds = hdr.ds

        demuxer = _mpeg_container_format(hdr.tsyntax)
        if demuxer is not None:
            yield from _iter_dicom_video(f, hdr, demuxer, opts)
            return
        try:
            decoder = get_decoder(hdr.tsyntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            raise InputRejected("unsupported", "No decoder is available for this transfer syntax.")

        mapper = _DicomPixelMapper(ds)
        indices = _dicom_indices(max(_dicom_int(ds, "NumberOfFrames", 1), 1), opts)

        kwargs: dict[str, Any] = {"indices": indices}
        if not hdr.has_file_meta:
            kwargs["transfer_syntax_uid"] = hdr.tsyntax
        if hdr.tsyntax.is_deflated:
            from pydicom import dcmread

            with _guard(_undecodable("The deflated dataset could not be inflated")):
                f.seek(0)
                source: Any = dcmread(f, force=True)
            if not any(k in source for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
                raise InputRejected("no_pixel_data", "The DICOM dataset has no pixel data.")
        else:
            f.seek(0)
            source = f
        frames = iter_pixels(source, **kwargs)
        decode_error = _undecodable("The DICOM pixel data could not be decoded")
        if hdr.tsyntax.is_encapsulated and not _has_sequence_delimiter(f, hdr.pixel_pos):
            decode_error = _truncated_encapsulated
        map_error = _undecodable("The DICOM pixel values could not be mapped")  # e.g. a broken LUT
        done = 0
        try:
            while (arr := _next(frames, decode_error)) is not _DONE:
                with _guard(map_error):
                    pixels = mapper(arr)
                yield Frame(pixels, index=indices[done], group_hint=hdr.group_hint, info=dict(hdr.info),
                            regions=hdr.regions, n_frames=len(indices))
                done += 1
        finally:
            frames.close()  # before the file it reads from is closed
        if done < len(indices):
            # Encapsulated data cut short: pydicom simply runs out of fragments.
            raise InputRejected("truncated", f"The DICOM pixel data holds {done} of "
                                             f"{len(indices)} expected frames.")


def read_group_hint(path: str | os.PathLike[str]) -> str | None:
    """Raw StudyInstanceUID (else PatientID) of a DICOM file, read from its header only;
    ``None`` for other formats or unreadable files.  The caller must hash it."""
    path = Path(path)
    if detect_format(path) != "dicom":
        return None
    try:
        with path.open("rb") as f:
            return _read_dicom_header(f, os.fstat(f.fileno()).st_size).group_hint
    except (InputRejected, OSError):
        return None


# --------------------------------------------------------------------------------------------
# Video (PyAV)
# --------------------------------------------------------------------------------------------


def _iter_av(source: Any, opts: ReaderOptions, demuxer: str | None = None,
             group_hint: str | None = None, info: dict | None = None) -> Iterator[Frame]:
    """Decode the first video stream frame by frame: (H, W) uint8 for gray pixel formats,
    (H, W, 3) uint8 RGB otherwise.  Every ``frame_stride``-th decoded frame is kept (all
    frames must be decoded anyway: inter-coded frames depend on their predecessors).
    ``source`` is an open binary file object, so FFmpeg never sees the path."""
    import av

    error = _undecodable("The video could not be decoded")
    with _guard(error):
        container = av.open(source, mode="r", format=demuxer)
    with container:
        if not container.streams.video:
            raise InputRejected("no_pixel_data", "The container has no video stream.")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx.width and ctx.height:  # raw elementary streams may only know after decoding
            _check_size(ctx.height, ctx.width, opts)
        pix_fmt = str(getattr(ctx, "pix_fmt", "") or "")
        out_format = "gray" if pix_fmt.startswith(("gray", "ya")) else "rgb24"
        # DICOM cines keep their DICOM notes only; plain videos note the codec.
        notes = dict(info) if info is not None else {"codec": ctx.name}
        decoded = container.decode(stream)
        n = 0
        while (frame := _next(decoded, error)) is not _DONE:
            if n % opts.frame_stride == 0:
                _check_size(frame.height, frame.width, opts)  # streams may change resolution
                with _guard(error):
                    arr = frame.to_ndarray(format=out_format)
                yield Frame(_pixels(arr), index=n, group_hint=group_hint, info=dict(notes))
            n += 1
        if n == 0:
            raise InputRejected("no_pixel_data", "The video stream has no decodable frame.")


def _iter_video(path: Path, opts: ReaderOptions) -> Iterator[Frame]:
    with path.open("rb") as f:
        yield from _iter_av(f, opts)


# --------------------------------------------------------------------------------------------
# Volumes (nibabel for NIfTI/Analyze, SimpleITK for NRRD and MetaImage)
# --------------------------------------------------------------------------------------------


@dataclass
class _SliceSpec:
    """Where one output frame comes from: ``index`` into the (i, j, k[, t]) data, and the
    Frame fields it gets."""

    index: tuple[Any, ...]
    frame_index: int
    axis: int | None = None
    info: dict = field(default_factory=dict)


def _plan_slices(full_shape: tuple[int, ...], opts: ReaderOptions) -> Iterator[_SliceSpec]:
    """Decide, from the header shape alone, which 2D slices a volume yields, and run the
    per-frame size check on them before any voxel is read (eagerly; the specs themselves are
    generated lazily, a long 4D series has millions).

    * 3D (i, j, k): for each axis in ``opts.volume_axes``, every ``slice_stride``-th slice;
      ``Frame.axis`` = axis, ``Frame.index`` = slice index.
    * 4D (i, j, k, t), t > 1 (trailing singleton dims are dropped first): every
      ``frame_stride``-th time point, sliced as above; ``Frame.index = t * n_slices + slice``
      so that (axis, index) stays unique, ``Frame.info = {"t": t, "slice": slice}``.
    * A 2D image stored as a volume (2D data, or exactly one spatial dim of size 1): one
      frame, ``axis=None``, ``index=0``; with a time axis (2D+t cine) one frame per kept
      time point, ``index = t``.
    """
    shape = list(full_shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 4:
        raise InputRejected("unsupported", f"Volumes with {len(shape)} dimensions are not supported.")
    spatial = shape[:3]
    n_t = shape[3] if len(shape) == 4 else 1
    pad = (0,) * (len(full_shape) - len(shape))  # indices for the dropped trailing singleton dims
    times = range(0, n_t, opts.frame_stride) if n_t > 1 else range(1)
    flat = [a for a, n in enumerate(spatial) if n == 1]
    if len(spatial) - len(flat) != 2 and (len(spatial) < 3 or flat):
        raise InputRejected("unsupported", "The volume has fewer than two non-trivial dimensions.")

    def at(spatial_index: tuple[Any, ...], t: int) -> tuple[Any, ...]:
        return spatial_index + ((t,) if n_t > 1 else ()) + pad

    if len(spatial) < 3 or flat:  # a 2D image or a 2D+t cine
        rows, cols = [n for n in spatial if n > 1][::-1]
        _check_size(rows, cols, opts)
        image = tuple(0 if n == 1 else slice(None) for n in spatial)
        return (_SliceSpec(at(image, t), t) for t in times)

    axes = tuple(dict.fromkeys(opts.volume_axes))  # de-duplicated, order kept
    for axis in axes:
        cols, rows = [n for a, n in enumerate(spatial) if a != axis]
        _check_size(rows, cols, opts)

    def specs() -> Iterator[_SliceSpec]:
        for t in times:
            for axis in axes:
                n = spatial[axis]
                for k in range(0, n, opts.slice_stride):
                    index = tuple(k if a == axis else slice(None) for a in range(3))
                    if n_t > 1:
                        yield _SliceSpec(at(index, t), t * n + k, axis, {"t": t, "slice": k})
                    else:
                        yield _SliceSpec(at(index, t), k, axis)

    return specs()


def _voxel_budget(shape: Iterable[int]) -> None:
    """Volumes that must be held whole are capped (see MAX_VOLUME_VOXELS)."""
    if math.prod(shape) > MAX_VOLUME_VOXELS:
        raise InputRejected("too_large", f"The volume exceeds {MAX_VOLUME_VOXELS} voxels.")


def _is_nifti(path: Path) -> bool:
    head = _read_head(path, 544)
    if head[:2] == b"\x1f\x8b":
        head = _gunzip_head(path)
    return _is_nifti_header(head) or (path.suffix.lower() == ".hdr" and len(head) >= 348)


def _open_nifti(path: Path) -> tuple[tuple[int, ...], Callable[[ReaderOptions], Any]]:
    """NIfTI-1/2 and Analyze via nibabel: (shape, load) where ``load(opts)`` returns data
    indexable in (i, j, k[, t]) order.  Uncompressed files are sliced through nibabel's
    ArrayProxy (memory-mapped reads, one slice at a time); a gzip stream cannot seek cheaply,
    so it is loaded once when it fits a quarter of the voxel budget, and beyond that sliced
    through the proxy along the last spatial axis only (install indexed_gzip to make those
    reads seekable)."""
    import nibabel as nib

    with _guard(_undecodable("The NIfTI file could not be read")):
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        proxy = img.dataobj
        dtype = img.get_data_dtype()
        offset = int(getattr(proxy, "offset", 0) or 0)
        data_file = Path(img.file_map["image"].filename or path)
    if dtype.names and not set("RGB").issubset(dtype.names):  # RGB24/RGBA32 structured voxels
        raise InputRejected("unsupported", "Structured voxel types other than RGB are not supported.")
    compressed = _read_head(data_file, 2) == b"\x1f\x8b"

    def load(opts: ReaderOptions) -> Any:
        needed = offset + math.prod(shape) * dtype.itemsize
        if not compressed and data_file.exists() and data_file.stat().st_size < needed:
            raise InputRejected("truncated", "The volume file is shorter than its header declares.")
        if compressed and len(shape) > 2:
            # without an index, every proxy slice of a gzip stream decompresses it from the
            # start (quadratic in slices): load it once when it fits the voxel budget, and only
            # stream slices (forward, along the last axis) when it does not
            if math.prod(shape) <= MAX_VOLUME_VOXELS // 4 or any(a != 2 for a in opts.volume_axes):
                _voxel_budget(shape)
                with _guard(_undecodable("The volume data could not be read")):
                    return np.asanyarray(proxy)
        return proxy

    return shape, load


@dataclass
class _ItkVolume:
    """An (x, y[, z[, t]][, 3]) view into a SimpleITK image's buffer.  The view does not keep
    the image alive by itself (its base is not the image), so the image is held here."""

    image: Any
    view: np.ndarray

    def __getitem__(self, index: tuple[Any, ...]) -> np.ndarray:
        return self.view[index]


def _open_itk(path: Path) -> tuple[tuple[int, ...], Callable[[ReaderOptions], Any]]:
    """NRRD / MetaImage (.mha, .mhd + raw) via SimpleITK: (shape, load).  Only the header is
    read here; ``load`` reads the whole volume once (within the voxel budget) and returns an
    (x, y[, z[, t]][, 3]) view of it."""
    import SimpleITK as sitk

    # ITK warnings go to stderr and may name the file: keep them off in this process.
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        size = tuple(int(s) for s in reader.GetSize())  # (x, y[, z[, t]])
        components = int(reader.GetNumberOfComponents())
    except RuntimeError:
        raise InputRejected("undecodable", "The volume header could not be read.") from None
    if components not in (1, 3, 4):
        raise InputRejected("unsupported", f"Volumes with {components} components per voxel are not supported.")

    def load(opts: ReaderOptions) -> Any:
        _voxel_budget(size + (components,))
        try:
            image = reader.Execute()
        except RuntimeError:
            raise InputRejected("undecodable", "The volume data could not be read.") from None
        view = sitk.GetArrayViewFromImage(image)  # ([t,] [z,] y, x[, c]): reversed index order
        nd = len(size)
        view = view.transpose(tuple(reversed(range(nd))) + tuple(range(nd, view.ndim)))
        if view.ndim > nd:  # colour: keep RGB, drop alpha
            view = view[..., :3] if components >= 3 else view[..., 0]
        return _ItkVolume(image, view)

    return size, load


def _slice_2d(data: Any, index: tuple[Any, ...]) -> np.ndarray:
    """Read one 2D slice and orient it as an image: the two remaining axes (a, b), a < b,
    become (rows, cols) = (b, a), so an axial slice of an (x, y, z) volume is (y, x) like
    ITK/DICOM viewers show it."""
    sl = np.asarray(data[index])
    if sl.dtype.names:  # nibabel RGB24 structured voxels
        sl = np.stack([sl["R"], sl["G"], sl["B"]], axis=-1)
    # Always a fresh C-ordered copy: ``sl`` may be a view into SimpleITK's buffer or a nibabel
    # memory map, which must not outlive the volume inside a yielded Frame.
    return np.array(np.swapaxes(sl, 0, 1), order="C")


def _iter_volume(path: Path, opts: ReaderOptions) -> Iterator[Frame]:
    """Volumes: header -> slice plan and size checks -> data -> one slice at a time.
    Slices are checked for NaN/inf one at a time ("non_finite")."""
    shape, load = _open_nifti(path) if _is_nifti(path) else _open_itk(path)
    plan = _plan_slices(shape, opts)
    data = load(opts)
    read_error = _undecodable("A volume slice could not be read")
    for spec in plan:
        with _guard(read_error):
            sl = _slice_2d(data, spec.index)
        yield Frame(_pixels(sl), index=spec.frame_index, axis=spec.axis, info=dict(spec.info))


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

_READERS: dict[str, Callable[[Path, ReaderOptions], Iterator[Frame]]] = {
    "image": _iter_image,
    "dicom": _iter_dicom,
    "volume": _iter_volume,
    "video": _iter_video,
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
