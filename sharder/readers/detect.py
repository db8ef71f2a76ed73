"""Format detection: the project's one table of magic bytes and file extensions.

``detect_format(path)`` -> ``"image" | "dicom" | "volume" | "video" | None``: which reader of
this package reads a file (content first, extension second).
``image_format(head)`` -> ``"png" | "jpeg" | "gif" | "tiff" | "bigtiff" | "jpeg2000" | "bmp" |
"webp" | "pnm" | None``: the still-image format that a file's first bytes announce. The DALI
fine-tune loader checks its files with it (``dali_pipes.finetune``), and
:func:`sharder.intensity.needs_conversion` reads the PNG bit depth behind it.

Only the first :data:`HEAD_BYTES` bytes are read (gzip: the first decompressed ones); nothing
here decodes pixels or raises for an unreadable file (the readers report that).
"""
from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

HEAD_BYTES = 1024

# format -> file name endings (lower case): the fallback when the content says nothing
EXTENSIONS = {
    "image": (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".gif",
              ".webp", ".jp2", ".j2k", ".jpx", ".pgm", ".ppm", ".pnm", ".pbm"),
    "dicom": (".dcm", ".dicom", ".dic", ".ima"),
    "volume": (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"),
    "video": (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
              ".ogv", ".mts", ".m2ts", ".3gp"),
}
FORMATS = tuple(EXTENSIONS)  # ("image", "dicom", "volume", "video")

# (first bytes, image format): still images announced by a fixed prefix (BMP, WebP and PNM need
# more than a prefix: see image_format)
IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
    (b"II+\x00", "bigtiff"), (b"MM\x00+", "bigtiff"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),  # JP2 container
    (b"\xff\x4f\xff\x51", "jpeg2000"),  # raw J2K codestream (SOC + SIZ markers)
)

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


def read_head(path: Path, n: int = HEAD_BYTES) -> bytes:
    """First ``n`` bytes of the file, ``b""`` if it cannot be read (detection then falls back
    to the extension; :func:`sharder.readers.iter_frames` reports the real problem)."""
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError:
        return b""


def is_nifti_header(head: bytes) -> bool:
    """NIfTI-1 (348-byte header, magic at 344) or NIfTI-2 (540 bytes, magic at 4)."""
    if len(head) >= 348 and head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        return head[344:348] in (b"n+1\x00", b"ni1\x00")
    if len(head) >= 12 and head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c"):
        return head[4:8] in (b"n+2\x00", b"ni2\x00")
    return False


def gunzip_head(path: Path, n: int = 544) -> bytes:
    """First ``n`` decompressed bytes of a gzip file (``b""`` if it is not valid gzip)."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, ValueError):
        return b""


def image_format(head: bytes) -> str | None:
    """The still-image format that ``head`` (a file's first bytes, 18 or more) announces, or
    None. A BMP is told from other "BM" files by its DIB header size, a PNM (P1-P6) by the
    whitespace after its magic."""
    for magic, fmt in IMAGE_MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:2] == b"BM" and len(head) >= 18 and int.from_bytes(head[14:18], "little") in _BMP_DIB_SIZES:
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3].isspace():
        return "pnm"
    return None


def is_nifti(path: Path) -> bool:
    """A NIfTI-1/2 file (plain or gzip-compressed), or an Analyze ``.hdr``: read by nibabel."""
    head = read_head(path, 544)
    if head[:2] == b"\x1f\x8b":
        head = gunzip_head(path)
    return is_nifti_header(head) or (path.suffix.lower() == ".hdr" and len(head) >= 348)


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
    if image_format(head) is not None:
        return "image"
    if head.startswith(b"NRRD000"):
        return "volume"
    if is_nifti_header(head):
        return "volume"
    if head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") and path.suffix.lower() == ".hdr":
        return "volume"  # Analyze 7.5 header (no magic string), paired with an .img file
    if head[:2] == b"\x1f\x8b":
        return "volume" if is_nifti_header(gunzip_head(path)) else None
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
    for fmt, exts in EXTENSIONS.items():
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
    head = read_head(path)
    fmt = _format_from_magic(head, path) or _format_from_extension(path)
    if fmt is None and _looks_like_raw_dicom(head):
        fmt = "dicom"
    return fmt

