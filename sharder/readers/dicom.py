"""DICOM (pydicom 3 + pylibjpeg plugins; PyAV for MPEG-2/H.264/HEVC encapsulated cines):
single- and multi-frame, native and compressed, one decoded frame at a time.

``Frame.group_hint`` carries the raw StudyInstanceUID (else PatientID) for the build to
salt-hash; ``Frame.info`` only ever holds a photometric interpretation and a transfer syntax
name from fixed lists; ``Frame.regions`` the scanner's image regions as integers.
"""
from __future__ import annotations

import contextlib
import io
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..frames import Frame, InputRejected, ReaderOptions
from .detect import detect_format
from .guard import DONE, guard, next_or_done, quiet, undecodable
from .pixels import check_size, gray_pixels, native, rgb_pixels
from .video import iter_av

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
        with quiet():
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
        with quiet(), contextlib.suppress(Exception):
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
    with guard(undecodable("The DICOM header could not be parsed")):
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
    with quiet():
        tsyntax = uids.UID(str(tsyntax))
        known_ts = tsyntax.is_transfer_syntax
        photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    info = {"photometric": photometric if photometric in _DICOM_PHOTOMETRIC else "other",
            "transfer_syntax": tsyntax.name if known_ts else "unknown"}
    return _DicomHeader(ds, tsyntax, bool(meta and meta.get("TransferSyntaxUID")), pixel_pos,
                        file_size, _dicom_group_hint(ds), info, _dicom_regions(ds))


def _dicom_regions(ds: Any) -> list[list[int]]:
    """The scanner's own image regions (integers only: see sharder/regions.py)."""
    from ..regions import read_us_regions

    with quiet(), contextlib.suppress(Exception):
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
    check_size(_dicom_int(ds, "Rows"), _dicom_int(ds, "Columns"), opts)
    if hdr.tsyntax.is_encapsulated or hdr.tsyntax.is_deflated:
        return
    # Native encoding: the element's value must be as long as the header says.
    from pydicom.pixels.utils import get_expected_length

    for keyword in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        _dicom_int(ds, keyword)
    _dicom_int(ds, "NumberOfFrames", 1)
    with guard(undecodable("The DICOM image attributes are incomplete")):
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
        return rgb_pixels(np.right_shift(rgb, self.lut_shift).astype(np.uint8))

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        arr = native(arr)
        if self.samples == 3:
            return rgb_pixels(arr, bits=self.bits_stored)
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
        return gray_pixels(arr)


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

    with guard(undecodable("The encapsulated video could not be read")):
        f.seek(hdr.pixel_pos)
        tail = read_dataset(f, hdr.tsyntax.is_implicit_VR, hdr.tsyntax.is_little_endian,
                            stop_when=lambda tag, vr, length: tag > Tag(0x7FE00010))
        stream = b"".join(generate_frames(tail.PixelData, number_of_frames=1))
    for frame in iter_av(io.BytesIO(stream), opts, demuxer=demuxer, group_hint=hdr.group_hint,
                          info=hdr.info):
        frame.regions = hdr.regions  # the scanner's regions hold for its encoded cine too
        yield frame


def iter_dicom(path: Path, opts: ReaderOptions) -> Iterator[Frame]:
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

            with guard(undecodable("The deflated dataset could not be inflated")):
                f.seek(0)
                source: Any = dcmread(f, force=True)
            if not any(k in source for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
                raise InputRejected("no_pixel_data", "The DICOM dataset has no pixel data.")
        else:
            f.seek(0)
            source = f
        frames = iter_pixels(source, **kwargs)
        decode_error = undecodable("The DICOM pixel data could not be decoded")
        if hdr.tsyntax.is_encapsulated and not _has_sequence_delimiter(f, hdr.pixel_pos):
            decode_error = _truncated_encapsulated
        map_error = undecodable("The DICOM pixel values could not be mapped")  # e.g. a broken LUT
        done = 0
        try:
            while (arr := next_or_done(frames, decode_error)) is not DONE:
                with guard(map_error):
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

