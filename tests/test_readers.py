"""Tests for sharder.readers: detection, decoding of every supported format/variant, options,
rejections and the privacy rule.  All inputs are generated in tmp_path or ship with pydicom."""
from __future__ import annotations

import io
import logging
import os
import shutil
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import examples
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG4HP41,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from sharder.frames import Frame, InputRejected, ReaderOptions
from sharder.readers import detect_format, image_format, iter_frames, read_group_hint
from sharder.readers.detect import HEAD_BYTES

RNG = np.random.default_rng(1234)
H, W = 24, 32


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


ALLOWED_GRAY = {np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32)}


def check_frame_contract(f: Frame) -> None:
    """Every frame: (H, W) gray of an allowed dtype or (H, W, 3) uint8, writeable, C-ordered."""
    px = f.pixels
    assert isinstance(px, np.ndarray)
    if px.ndim == 2:
        assert px.dtype in ALLOWED_GRAY
    else:
        assert px.ndim == 3 and px.shape[2] == 3 and px.dtype == np.uint8
    assert px.dtype.isnative and px.flags.c_contiguous and px.flags.writeable
    assert min(px.shape[:2]) > 0


def frames_of(path: Path, **opts) -> list[Frame]:
    frames = list(iter_frames(path, detect_format(path), ReaderOptions(**opts)))
    for f in frames:
        check_frame_contract(f)
    return frames


def pixels_of(path: Path, **opts) -> list[np.ndarray]:
    return [f.pixels for f in frames_of(path, **opts)]


def rejection(path: Path, fmt: str | None = "auto", **opts) -> InputRejected:
    fmt = detect_format(path) if fmt == "auto" else fmt
    with pytest.raises(InputRejected) as info:
        for _ in iter_frames(path, fmt, ReaderOptions(**opts)):
            pass
    return info.value


def rejection_and_peak(path: Path):
    """The rejection of ``path`` and the peak Python memory reading it took (bytes)."""
    tracemalloc.start()
    try:
        err = rejection(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return err, peak


def gray8() -> np.ndarray:
    return RNG.integers(0, 256, (H, W), dtype=np.uint8)


def gray16() -> np.ndarray:
    return RNG.integers(0, 65536, (H, W), dtype=np.uint16)


def rgb8() -> np.ndarray:
    return RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def smooth_rgb(h: int = 48, w: int = 64, shift: int = 0) -> np.ndarray:
    """Smooth colour gradients: survive lossy codecs well enough to compare values."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 255 // (w - 1) + shift) % 256, y * 255 // (h - 1),
                     np.full_like(x, 90 + shift % 100)], axis=-1).astype(np.uint8)


# --- DICOM writing ---------------------------------------------------------------------------

SECRET_NAME = "Zyxwvut^Qqqq"
SECRET_ID = "PID-88776655"
SECRET_INSTITUTION = "Qwertyuiop General Hospital"
SECRET_DATE = "19870613"
STUDY_UID = "1.2.826.0.1.3680043.8.498.424242"


def dicom_dataset(photometric: str, rows: int, cols: int, *, samples: int = 1, bits: int = 8,
                  bits_stored: int | None = None, signed: bool = False, frames: int | None = None,
                  planar: int = 0, ts: UID = ExplicitVRLittleEndian, study_uid: str | None = STUDY_UID,
                  patient_id: str | None = SECRET_ID) -> Dataset:
    """A minimal US image dataset with identifying tags (for the privacy checks)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ts
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # US Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = SECRET_NAME
    if patient_id:
        ds.PatientID = patient_id
    if study_uid:
        ds.StudyInstanceUID = study_uid
    ds.StudyDate = SECRET_DATE
    ds.InstitutionName = SECRET_INSTITUTION
    ds.Modality = "US"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if samples == 3:
        ds.PlanarConfiguration = planar
    if frames is not None:
        ds.NumberOfFrames = frames
    return ds


def write_native_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", *,
                       frames: bool = False, planar: int = 0, bits_stored: int | None = None,
                       big_endian: bool = False, pixel_data: bytes | None = None, **kw) -> Path:
    """arr: (H, W), (H, W, 3), (F, H, W) or (F, H, W, 3); written uncompressed."""
    samples = 3 if arr.shape[-1] == 3 and arr.ndim == (4 if frames else 3) else 1
    rows, cols = arr.shape[(1 if frames else 0):(3 if frames else 2)]
    ts = ExplicitVRBigEndian if big_endian else ExplicitVRLittleEndian
    ds = dicom_dataset(photometric, rows, cols, samples=samples, bits=arr.dtype.itemsize * 8,
                       bits_stored=bits_stored, signed=arr.dtype.kind == "i",
                       frames=arr.shape[0] if frames else None, planar=planar, ts=ts, **kw)
    if pixel_data is None:
        data = arr
        if samples == 3 and planar == 1:  # colour-by-plane: RRR..GGG..BBB per frame
            data = np.moveaxis(arr, -1, -3)
        data = data.astype(data.dtype.newbyteorder(">" if big_endian else "<"))
        pixel_data = data.tobytes()
    ds.PixelData = pixel_data + b"\x00" * (len(pixel_data) % 2)
    ds["PixelData"].VR = "OW" if arr.dtype.itemsize > 1 else "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_encapsulated_dicom(path: Path, fragments: list[bytes], ts: UID, photometric: str,
                             rows: int, cols: int, samples: int = 3, frames: int | None = None) -> Path:
    ds = dicom_dataset(photometric, rows, cols, samples=samples, frames=frames, ts=ts)
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95)
    return buf.getvalue()


# --- other formats -------------------------------------------------------------------------


def write_video(path: Path, values: list[int], codec: str, container_format: str | None = None,
                h: int = 48, w: int = 64) -> Path:
    """Frames are smooth gradients offset by ``values[i]`` (so each frame is distinguishable)."""
    import av

    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for v in values:
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), v, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def volume_ijk(shape=(5, 6, 7)) -> np.ndarray:
    """vol[i, j, k] = 100 i + 10 j + k: every voxel names its own index."""
    i, j, k = np.indices(shape)
    return (100 * i + 10 * j + k).astype(np.int16)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# ------------------------------------------------------------------------------------------
# format detection
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """One file per container type, with its expected format."""
    import nibabel as nib
    import nrrd
    import SimpleITK as sitk

    d = tmp_path_factory.mktemp("samples")
    out: dict[str, tuple[Path, str]] = {}
    img = rgb8()
    for ext in ("png", "jpg", "bmp", "tif", "gif", "webp"):
        p = d / f"a.{ext}"
        Image.fromarray(img).save(p)
        out[ext] = (p, "image")
    out["dcm"] = (write_native_dicom(d / "a.dcm", gray8()), "dicom")
    vol = volume_ijk()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), d / "a.nii")
    out["nii"] = (d / "a.nii", "volume")
    nib.save(nib.Nifti1Image(vol, np.eye(4)), d / "a.nii.gz")
    out["nii.gz"] = (d / "a.nii.gz", "volume")
    nib.save(nib.Nifti2Image(vol, np.eye(4)), d / "b.nii")
    out["nii2"] = (d / "b.nii", "volume")
    nrrd.write(str(d / "a.nrrd"), vol)
    out["nrrd"] = (d / "a.nrrd", "volume")
    sitk.WriteImage(sitk.GetImageFromArray(vol.transpose(2, 1, 0)), str(d / "a.mha"))
    out["mha"] = (d / "a.mha", "volume")
    out["mp4"] = (write_video(d / "a.mp4", [10, 20], "mpeg4"), "video")
    out["avi"] = (write_video(d / "a.avi", [10, 20], "mjpeg"), "video")
    out["mkv"] = (write_video(d / "a.mkv", [10, 20], "mpeg4"), "video")
    return out


@pytest.mark.parametrize("kind", ["png", "jpg", "bmp", "tif", "gif", "webp", "dcm", "nii", "nii.gz",
                                  "nii2", "nrrd", "mha", "mp4", "avi", "mkv"])
def test_detect_by_content_ignores_extension(sample_files, kind, tmp_path):
    path, expected = sample_files[kind]
    assert detect_format(path) == expected
    for name in ("renamed.bin", "renamed"):  # wrong extension, no extension
        other = tmp_path / name
        shutil.copy(path, other)
        assert detect_format(other) == expected, name


@pytest.mark.parametrize("kind,fmt", [("png", "png"), ("jpg", "jpeg"), ("bmp", "bmp"), ("tif", "tiff"),
                                      ("gif", "gif"), ("webp", "webp")])
def test_one_table_names_the_still_image_format(sample_files, kind, fmt):
    """image_format (the table the DALI fine-tune loader and the PNG bit-depth check use) and
    detect_format agree: what image_format names, the readers read as an image."""
    path, _ = sample_files[kind]
    assert image_format(path.read_bytes()[:HEAD_BYTES]) == fmt
    assert image_format(b"\x00" * 64) is None and image_format(b"BM") is None  # "BM" alone is no BMP


def test_pnm_is_detected_by_content(tmp_path):
    img = gray8()
    p = tmp_path / "scan"  # no extension
    Image.fromarray(img).save(p, format="PPM")
    assert image_format(p.read_bytes()[:HEAD_BYTES]) == "pnm"
    assert detect_format(p) == "image"
    (px,) = pixels_of(p)
    np.testing.assert_array_equal(px, img)


def test_detect_wrong_extension_is_read_by_content(tmp_path):
    img = rgb8()
    p = tmp_path / "really_a_png.jpg"
    Image.fromarray(img).save(p, format="PNG")
    assert detect_format(p) == "image"
    (px,) = pixels_of(p)
    np.testing.assert_array_equal(px, img)  # lossless: it was decoded as the PNG it is


def test_detect_dicom_without_extension_and_without_preamble(tmp_path):
    src = write_native_dicom(tmp_path / "x.dcm", gray8())
    raw = src.read_bytes()[132:]  # drop preamble + 'DICM' -> starts with group 0002
    p = tmp_path / "IM000001"
    p.write_bytes(raw)
    assert detect_format(p) == "dicom"
    noext = tmp_path / "IM000002"
    shutil.copy(src, noext)
    assert detect_format(noext) == "dicom"


def test_detect_unknown(tmp_path):
    p = tmp_path / "noise.bin"
    p.write_bytes(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert detect_format(p) is None
    t = tmp_path / "notes.txt"
    t.write_text("hello, not an image\n")
    assert detect_format(t) is None
    assert rejection(t).reason == "unknown_format"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert detect_format(empty) == "image"  # by extension; reading then says why it is unusable


# ------------------------------------------------------------------------------------------
# still images
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "bmp", "tif"])
def test_image_gray8_rgb_lossless(tmp_path, ext):
    g, c = gray8(), rgb8()
    Image.fromarray(g).save(tmp_path / f"g.{ext}")
    Image.fromarray(c).save(tmp_path / f"c.{ext}")
    (pg,) = pixels_of(tmp_path / f"g.{ext}")
    (pc,) = pixels_of(tmp_path / f"c.{ext}")
    assert pg.dtype == np.uint8 and pg.shape == (H, W)
    assert pc.dtype == np.uint8 and pc.shape == (H, W, 3)
    np.testing.assert_array_equal(pg, g)
    np.testing.assert_array_equal(pc, c)


def test_image_jpeg_gray_and_rgb(tmp_path):
    g = np.tile(np.arange(W, dtype=np.uint8) * 8, (H, 1))
    c = smooth_rgb(H, W)
    Image.fromarray(g).save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(c).save(tmp_path / "c.jpeg", quality=95)
    (pg,) = pixels_of(tmp_path / "g.jpg")
    (pc,) = pixels_of(tmp_path / "c.jpeg")
    assert pg.shape == (H, W) and pc.shape == (H, W, 3)
    assert np.abs(pg.astype(int) - g).mean() < 2
    assert np.abs(pc.astype(int) - c).mean() < 4


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_image_gray16(tmp_path, ext):
    g = gray16()
    Image.fromarray(g).save(tmp_path / f"g16.{ext}")
    (px,) = pixels_of(tmp_path / f"g16.{ext}")
    assert px.dtype == np.uint16
    np.testing.assert_array_equal(px, g)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_image_rgba_drops_alpha(tmp_path, ext):
    rgba = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / f"a.{ext}")
    (px,) = pixels_of(tmp_path / f"a.{ext}")
    assert px.shape == (H, W, 3)
    np.testing.assert_array_equal(px, rgba[..., :3])


def test_image_la_is_gray(tmp_path):
    la = RNG.integers(0, 256, (H, W, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    (px,) = pixels_of(tmp_path / "la.png")
    assert px.shape == (H, W)
    np.testing.assert_array_equal(px, la[..., 0])


@pytest.mark.parametrize("ext", ["png", "bmp", "gif", "tif"])
def test_image_palette_becomes_rgb(tmp_path, ext):
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette.tobytes())
    im.save(tmp_path / f"p.{ext}")
    with Image.open(tmp_path / f"p.{ext}") as im:
        assert im.mode == "P"
    (px,) = pixels_of(tmp_path / f"p.{ext}")
    assert px.shape == (H, W, 3) and px.dtype == np.uint8
    np.testing.assert_array_equal(px, palette[idx])


def test_image_multipage_tiff_stride_and_max_frames(tmp_path):
    pages = [np.full((H, W), 10 * (i + 1), np.uint8) for i in range(5)]
    Image.fromarray(pages[0]).save(tmp_path / "stack.tif", save_all=True,
                                   append_images=[Image.fromarray(p) for p in pages[1:]])
    frames = frames_of(tmp_path / "stack.tif")
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    for f, p in zip(frames, pages):
        np.testing.assert_array_equal(f.pixels, p)
    assert [f.index for f in frames_of(tmp_path / "stack.tif", frame_stride=2)] == [0, 2, 4]
    assert [int(f.pixels[0, 0]) for f in frames_of(tmp_path / "stack.tif", max_frames=2)] == [10, 20]


def test_image_float_rgb_tiff_falls_back_to_opencv(tmp_path):
    import cv2

    rgb = RNG.random((H, W, 3)).astype(np.float32)
    p = tmp_path / "float_rgb.tif"
    assert cv2.imwrite(str(p), rgb[..., ::-1])  # OpenCV writes BGR
    with pytest.raises(OSError), Image.open(p) as im:  # precondition: PIL cannot read this one
        im.load()
    (f,) = frames_of(p)
    assert f.pixels.shape == (H, W, 3) and f.pixels.dtype == np.uint8
    np.testing.assert_array_equal(f.pixels, np.rint(rgb * 255).astype(np.uint8))


def test_image_float_gray_nan_rejected(tmp_path):
    g = RNG.random((H, W)).astype(np.float32)
    Image.fromarray(g, "F").save(tmp_path / "f.tif")
    (px,) = pixels_of(tmp_path / "f.tif")
    assert px.dtype == np.float32
    np.testing.assert_array_equal(px, g)
    g[3, 4] = np.nan
    Image.fromarray(g, "F").save(tmp_path / "nan.tif")
    assert rejection(tmp_path / "nan.tif").reason == "non_finite"


# ------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    for name in ("e.png", "e.dcm", "e.nii", "e.mp4"):
        p = tmp_path / name
        p.write_bytes(b"")
        assert rejection(p).reason == "empty_file"


def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.png"
    Image.fromarray(gray8()).save(p)
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running as root: permissions do not stop reads")
        assert detect_format(p) == "image"  # by extension: the content cannot be read
        assert rejection(p, fmt="image").reason == "unreadable"
    finally:
        p.chmod(0o644)


def test_missing_file_and_directory(tmp_path):
    assert rejection(tmp_path / "missing.png", fmt="image").reason == "unreadable"
    assert rejection(tmp_path, fmt="image").reason == "unreadable"


def test_unknown_format_argument(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(gray8()).save(p)
    assert rejection(p, fmt=None).reason == "unknown_format"
    assert rejection(p, fmt="spreadsheet").reason == "unknown_format"


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_image(tmp_path, ext):
    p = tmp_path / f"full.{ext}"
    Image.fromarray(rgb8()).save(p)
    data = p.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[: len(data) // 2])
    assert rejection(cut).reason == "truncated"


def test_random_bytes_with_image_and_dicom_extension(tmp_path):
    junk = RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "junk.dcm").write_bytes(junk)
    (tmp_path / "junk.png").write_bytes(junk)
    assert detect_format(tmp_path / "junk.dcm") == "dicom"
    assert rejection(tmp_path / "junk.dcm").reason == "undecodable"
    assert rejection(tmp_path / "junk.png").reason == "undecodable"


def test_png_bomb_header_rejected_without_allocating(tmp_path):
    side = 100_000
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit gray, 10^10 pixels
    idat = zlib.compress(b"\x00" * 1000)
    p = tmp_path / "bomb.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
                  + png_chunk(b"IEND", b""))
    err, peak = rejection_and_peak(p)
    assert err.reason == "too_large"
    assert peak < 20_000_000  # the 10 GB image was never allocated
    # the limit is the caller's, not PIL's: a small image is too large under a small limit
    small = tmp_path / "small.png"
    Image.fromarray(gray8()).save(small)
    assert rejection(small, max_pixels=H * W - 1).reason == "too_large"
    assert len(pixels_of(small, max_pixels=H * W)) == 1


def test_invalid_options(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(gray8()).save(p)
    for bad in ({"frame_stride": 0}, {"slice_stride": 0}, {"volume_axes": (3,)}, {"volume_axes": ()}):
        with pytest.raises(ValueError):
            list(iter_frames(p, "image", ReaderOptions(**bad)))


# ------------------------------------------------------------------------------------------
# DICOM: synthetic photometric variants
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,bits_stored", [(np.uint8, 8), (np.uint16, 12), (np.uint16, 16), (np.int16, 16)])
def test_dicom_monochrome2(tmp_path, dtype, bits_stored):
    info = np.iinfo(dtype)
    hi = min(info.max, (1 << bits_stored) - 1) if info.min == 0 else info.max
    arr = RNG.integers(info.min, hi + 1, (H, W)).astype(dtype)
    p = write_native_dicom(tmp_path / "m2.dcm", arr, bits_stored=bits_stored)
    (f,) = frames_of(p)
    assert f.pixels.dtype == dtype and f.pixels.shape == (H, W)
    np.testing.assert_array_equal(f.pixels, arr)
    assert f.info == {"photometric": "MONOCHROME2", "transfer_syntax": "Explicit VR Little Endian"}
    assert f.group_hint == STUDY_UID and f.axis is None


@pytest.mark.parametrize("dtype,bits_stored", [(np.uint8, 8), (np.uint16, 12)])
def test_dicom_monochrome1_is_inverted(tmp_path, dtype, bits_stored):
    top = (1 << bits_stored) - 1
    arr = RNG.integers(0, top + 1, (H, W)).astype(dtype)
    arr[0, 0], arr[0, 1] = 0, top
    p = write_native_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1", bits_stored=bits_stored)
    (px,) = pixels_of(p)
    assert px.dtype == dtype
    np.testing.assert_array_equal(px, top - arr)  # low stored value = bright
    assert px[0, 0] == top and px[0, 1] == 0


def test_dicom_rescale_applied_to_gray(tmp_path):
    arr = RNG.integers(-500, 500, (H, W)).astype(np.int16)
    src = write_native_dicom(tmp_path / "r.dcm", arr)
    ds = pydicom.dcmread(src)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.save_as(src)
    (px,) = pixels_of(src)
    assert px.dtype == np.float32
    np.testing.assert_allclose(px, arr * 2.0 - 100)


@pytest.mark.parametrize("planar", [0, 1])
def test_dicom_rgb_planar_configuration(tmp_path, planar):
    arr = rgb8()
    p = write_native_dicom(tmp_path / "rgb.dcm", arr, "RGB", planar=planar)
    (px,) = pixels_of(p)
    assert px.shape == (H, W, 3) and px.dtype == np.uint8
    np.testing.assert_array_equal(px, arr)


def test_dicom_rgb_16bit_uses_bits_stored(tmp_path):
    arr = RNG.integers(0, 4096, (H, W, 3)).astype(np.uint16)
    p = write_native_dicom(tmp_path / "rgb12.dcm", arr, "RGB", bits_stored=12)
    (px,) = pixels_of(p)
    assert px.dtype == np.uint8
    np.testing.assert_array_equal(px, (arr >> 4).astype(np.uint8))  # top 8 of the 12 bits


def test_dicom_ybr_full_converted_to_rgb(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = smooth_rgb()
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    assert np.abs(ybr.astype(int) - rgb).max() > 30  # precondition: the planes really differ
    p = write_native_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL")
    (f,) = frames_of(p)
    assert f.pixels.shape == rgb.shape and f.info["photometric"] == "YBR_FULL"
    assert np.abs(f.pixels.astype(int) - rgb).max() <= 2


def test_dicom_palette_color_16bit_lut(tmp_path):
    idx = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    p = write_native_dicom(tmp_path / "pal.dcm", idx, "PALETTE COLOR")
    ds = pydicom.dcmread(p)
    entries = np.arange(256, dtype=np.uint16)
    luts = {"Red": entries * 257, "Green": (255 - entries) * 257, "Blue": np.full(256, 0x8000, np.uint16)}
    for colour, lut in luts.items():
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.astype("<u2").tobytes())
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"
    ds.save_as(p)
    (px,) = pixels_of(p)
    assert px.shape == (H, W, 3) and px.dtype == np.uint8
    np.testing.assert_array_equal(px[..., 0], idx)
    np.testing.assert_array_equal(px[..., 1], 255 - idx)
    assert (px[..., 2] == 128).all()


def test_dicom_big_endian_explicit(tmp_path):
    arr = RNG.integers(0, 4096, (H, W)).astype(np.uint16)
    p = write_native_dicom(tmp_path / "be.dcm", arr, bits_stored=12, big_endian=True)
    (f,) = frames_of(p)
    assert f.info["transfer_syntax"] == "Explicit VR Big Endian"
    assert f.pixels.dtype == np.uint16 and f.pixels.dtype.isnative
    np.testing.assert_array_equal(f.pixels, arr)


def test_dicom_multiframe_native_stride_and_max_frames(tmp_path):
    cine = np.stack([np.full((H, W), 10 * i, np.uint8) for i in range(7)])
    p = write_native_dicom(tmp_path / "cine.dcm", cine, frames=True)
    frames = frames_of(p)
    assert [f.index for f in frames] == list(range(7))
    assert [int(f.pixels[0, 0]) for f in frames] == [10 * i for i in range(7)]
    assert [f.index for f in frames_of(p, frame_stride=3)] == [0, 3, 6]
    assert [f.index for f in frames_of(p, frame_stride=2, max_frames=2)] == [0, 2]
    assert frames_of(p, max_frames=0) == []


def test_dicom_rle_multiframe_rgb_and_gray(tmp_path):
    cine = RNG.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    ds = dicom_dataset("RGB", H, W, samples=3, frames=3)
    ds.compress(RLELossless, cine, generate_instance_uid=False)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    frames = frames_of(tmp_path / "rle.dcm")
    assert frames[0].info["transfer_syntax"] == "RLE Lossless"
    np.testing.assert_array_equal(np.stack([f.pixels for f in frames]), cine)
    gray = RNG.integers(0, 4096, (H, W)).astype(np.uint16)
    ds = dicom_dataset("MONOCHROME2", H, W, bits=16, bits_stored=12)
    ds.compress(RLELossless, gray, generate_instance_uid=False)
    ds.save_as(tmp_path / "rle16.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(pixels_of(tmp_path / "rle16.dcm")[0], gray)


def test_dicom_jpeg_baseline_cine_synthetic(tmp_path):
    """YBR_FULL_422 JPEG baseline cine, like most ultrasound loops; the reference is PIL's
    decoding of the same JPEG bytes."""
    rgbs = [smooth_rgb(shift=40 * i) for i in range(4)]
    jpegs = [jpeg_bytes(x) for x in rgbs]
    p = write_encapsulated_dicom(tmp_path / "jpg.dcm", jpegs, JPEGBaseline8Bit, "YBR_FULL_422",
                                 48, 64, frames=4)
    frames = frames_of(p, frame_stride=2)
    assert [f.index for f in frames] == [0, 2]
    for f in frames:
        ref = np.asarray(Image.open(io.BytesIO(jpegs[f.index])).convert("RGB")).astype(int)
        assert f.pixels.shape == (48, 64, 3)
        assert np.abs(f.pixels.astype(int) - ref).mean() < 2


def test_dicom_h264_cine_via_pyav(tmp_path):
    """MPEG-4 AVC encapsulated cine (common for ultrasound exports) decoded with PyAV."""
    av = pytest.importorskip("av")
    if "libx264" not in av.codecs_available:
        pytest.skip("no H.264 encoder in this PyAV build")
    raw = tmp_path / "stream.h264"
    write_video(raw, [20, 60, 100, 140, 180], "libx264", container_format="h264")
    p = write_encapsulated_dicom(tmp_path / "avc.dcm", [raw.read_bytes()], MPEG4HP41,
                                 "YBR_PARTIAL_420", 48, 64, frames=5)
    frames = frames_of(p)
    assert len(frames) == 5
    assert frames[0].info == {"photometric": "YBR_PARTIAL_420", "transfer_syntax": MPEG4HP41.name}
    assert [f.pixels.shape for f in frames] == [(48, 64, 3)] * 5
    means = [float(f.pixels.mean()) for f in frames]
    assert np.allclose(means, [20, 60, 100, 140, 180], atol=8)
    assert [f.index for f in frames_of(p, frame_stride=2)] == [0, 2, 4]


def test_dicom_unsupported_transfer_syntax(tmp_path):
    p = write_encapsulated_dicom(tmp_path / "j2kmc.dcm", [b"\xff\x4f\xff\x51" + b"\x00" * 64],
                                 UID("1.2.840.10008.1.2.4.92"), "RGB", H, W, frames=1)
    assert rejection(p).reason == "unsupported"  # JPEG 2000 Part 2: no decoder in pydicom
    q = write_native_dicom(tmp_path / "private.dcm", gray8())
    ds = pydicom.dcmread(q)
    ds.file_meta.TransferSyntaxUID = "1.2.840.113619.5.2"  # GE private implicit big endian
    ds.save_as(q)
    assert rejection(q).reason == "unsupported"


# ------------------------------------------------------------------------------------------
# DICOM: real files shipped with pydicom
# ------------------------------------------------------------------------------------------


def test_dicom_real_ybr_full_422_echo_cine():
    path = examples.get_path("ybr_color")  # 30-frame JPEG baseline YBR_FULL_422 US cine
    frames = frames_of(path)
    assert len(frames) == 30
    assert all(f.pixels.shape == (240, 320, 3) and f.pixels.dtype == np.uint8 for f in frames)
    # Independent reference: PIL decodes the first JPEG fragment straight to RGB.
    ds = pydicom.dcmread(path)
    from pydicom.encaps import generate_frames

    first = next(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    ref = np.asarray(Image.open(io.BytesIO(first)).convert("RGB")).astype(int)
    assert np.abs(frames[0].pixels.astype(int) - ref).mean() < 2
    # ... and pydicom's own decode of frame 17 agrees too
    np.testing.assert_allclose(frames[17].pixels, ds.pixel_array[17], atol=1)
    assert [f.index for f in frames_of(path, frame_stride=7)] == [0, 7, 14, 21, 28]
    assert [f.index for f in frames_of(path, max_frames=3)] == [0, 1, 2]
    assert frames[0].info == {"photometric": "YBR_FULL_422", "transfer_syntax": "JPEG Baseline (Process 1)"}


def test_dicom_real_palette_color():
    from pydicom.pixels import apply_color_lut

    path = examples.get_path("palette_color")
    ds = pydicom.dcmread(path)
    assert ds.RedPaletteColorLookupTableDescriptor[2] == 16
    (px,) = pixels_of(path)
    assert px.shape == (350, 800, 3) and px.dtype == np.uint8
    np.testing.assert_array_equal(px, (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8))


@pytest.mark.parametrize("name", ["rgb_color", "jpeg2k"])
def test_dicom_real_colour_examples(name):
    path = examples.get_path(name)
    (f,) = frames_of(path)
    ref = pydicom.dcmread(path).pixel_array
    assert f.pixels.shape == ref.shape and f.pixels.dtype == np.uint8
    np.testing.assert_array_equal(f.pixels, ref)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_expb.dcm"])
def test_dicom_real_lossless_transfer_syntaxes_gray(name):
    """Every lossless encoding of MR_small must give back exactly MR_small's pixels."""
    (ref,) = pixels_of(Path(get_testdata_file("MR_small.dcm")))
    (px,) = pixels_of(Path(get_testdata_file(name)))
    assert px.dtype == np.int16 and px.dtype.isnative
    np.testing.assert_array_equal(px, ref)


@pytest.mark.parametrize("name,max_err", [
    ("SC_rgb_jpeg_gdcm.dcm", 0),          # JPEG lossless SV1
    ("SC_rgb_rle_16bit.dcm", 0),          # RLE, 16-bit RGB -> 8 bits
    ("SC_rgb_rle_32bit.dcm", 0),          # RLE, 32-bit RGB -> 8 bits
    ("SC_rgb_gdcm_KY.dcm", 0),            # JPEG 2000
    ("SC_rgb_dcmtk_+eb+cr.dcm", 2),       # JPEG baseline, RGB
    ("SC_rgb_jpeg_dcmtk.dcm", 8),         # JPEG baseline, YBR_FULL
    ("SC_ybr_full_422_uncompressed.dcm", 8),  # native YBR_FULL_422
])
def test_dicom_real_colour_transfer_syntaxes(name, max_err):
    (ref,) = pixels_of(Path(get_testdata_file("SC_rgb_rle.dcm")))
    (px,) = pixels_of(Path(get_testdata_file(name)))
    assert px.shape == (100, 100, 3) and px.dtype == np.uint8
    assert np.abs(px.astype(int) - ref).max() <= max_err


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "image_dfl.dcm", "JPEG2000.dcm"])
def test_dicom_real_other_transfer_syntaxes(name):
    """12-bit JPEG extended, deflated explicit VR, JPEG 2000 lossy: equal to pydicom's decode."""
    path = Path(get_testdata_file(name))
    ds = pydicom.dcmread(path)
    (px,) = pixels_of(path)
    np.testing.assert_array_equal(px, ds.pixel_array)


def test_dicom_real_rescale_ct():
    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    (px,) = pixels_of(path)
    assert px.dtype == np.float32
    np.testing.assert_allclose(px, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


# ------------------------------------------------------------------------------------------
# DICOM: rejections, group hint, privacy
# ------------------------------------------------------------------------------------------


def test_dicom_without_pixel_data(tmp_path):
    ds = dicom_dataset("MONOCHROME2", H, W)
    ds.save_as(tmp_path / "nopix.dcm", enforce_file_format=True)
    assert rejection(tmp_path / "nopix.dcm").reason == "no_pixel_data"
    assert rejection(Path(get_testdata_file("rtplan.dcm"))).reason == "no_pixel_data"


def test_dicom_truncated_native_and_header(tmp_path):
    p = write_native_dicom(tmp_path / "full.dcm", gray16())
    data = p.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-300])
    assert rejection(tmp_path / "cut.dcm").reason == "truncated"
    (tmp_path / "cut_header.dcm").write_bytes(data[:300])  # inside the header
    assert rejection(tmp_path / "cut_header.dcm").reason == "truncated"


def test_dicom_truncated_encapsulated_cine(tmp_path):
    data = examples.get_path("ybr_color").read_bytes()
    p = tmp_path / "cut_cine.dcm"
    p.write_bytes(data[: int(len(data) * 0.7)])
    got = []
    with pytest.raises(InputRejected) as info:
        got.extend(iter_frames(p, "dicom", ReaderOptions()))  # keeps the frames before the error
    assert info.value.reason == "truncated"
    assert 0 < len(got) < 30  # the intact frames came first


def test_dicom_too_large_from_header(tmp_path):
    # 60000 x 60000 declared, a few bytes present: must be refused before decoding or reading.
    ds = dicom_dataset("MONOCHROME2", 60000, 60000)
    ds.PixelData = b"\x00" * 64
    ds.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    assert rejection(tmp_path / "huge.dcm").reason == "too_large"
    small = write_native_dicom(tmp_path / "small.dcm", gray8())
    assert rejection(small, max_pixels=100).reason == "too_large"


def test_dicom_group_hint_falls_back_to_patient_id(tmp_path):
    p = write_native_dicom(tmp_path / "a.dcm", gray8(), study_uid=None)
    assert frames_of(p)[0].group_hint == SECRET_ID
    assert read_group_hint(p) == SECRET_ID
    q = write_native_dicom(tmp_path / "b.dcm", gray8(), study_uid=None, patient_id=None)
    assert frames_of(q)[0].group_hint is None
    r = write_native_dicom(tmp_path / "c.dcm", gray8())
    assert read_group_hint(r) == STUDY_UID
    png = tmp_path / "x.png"
    Image.fromarray(gray8()).save(png)
    assert read_group_hint(png) is None


def test_privacy_no_tag_values_or_paths_in_details_info_or_logs(tmp_path, caplog, capfd):
    """Frame.info, rejection details, warnings, log records and stderr must not carry the
    patient name, IDs, dates, institution or the file name."""
    secret_dir = tmp_path / "Secretdirname_Zyxwvut"
    secret_dir.mkdir()
    forbidden = [SECRET_NAME, "Zyxwvut", "Qqqq", SECRET_ID, SECRET_DATE, SECRET_INSTITUTION,
                 "Secretdirname", "secretfile"]
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)

    good = write_native_dicom(secret_dir / "secretfile_ok.dcm", gray8(), frames=False)
    nopix = secret_dir / "secretfile_nopix.dcm"
    dicom_dataset("MONOCHROME2", H, W).save_as(nopix, enforce_file_format=True)
    cut = secret_dir / "secretfile_cut.dcm"
    cut.write_bytes(good.read_bytes()[:-100])
    bad_value = secret_dir / "secretfile_badvalue.dcm"  # an invalid IS value pydicom warns about
    bad_vr = secret_dir / "secretfile_badvr.dcm"  # malformed value in an unused element
    ds = pydicom.dcmread(good)
    ds.NumberOfFrames = "87654321"
    ds.save_as(bad_value)
    bad_value.write_bytes(bad_value.read_bytes().replace(b"87654321", b"Zyxwvut "))
    ds = pydicom.dcmread(good)
    ds.SeriesNumber = "11223344"
    ds.save_as(bad_vr)
    bad_vr.write_bytes(bad_vr.read_bytes().replace(b"11223344", b"Qqqq    "))
    bad_pi = secret_dir / "secretfile_badpi.dcm"  # free text where a defined term belongs
    bad_pi.write_bytes(good.read_bytes().replace(b"MONOCHROME2 ", SECRET_NAME.encode()))
    junk = secret_dir / "secretfile_junk.dcm"
    junk.write_bytes(b"\x00" * 128 + b"DICM" + RNG.integers(0, 256, 400, dtype=np.uint8).tobytes())
    badpng = secret_dir / "secretfile_bad.png"
    badpng.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    badmp4 = secret_dir / "secretfile_bad.mp4"
    badmp4.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200)
    bad_jpeg = write_encapsulated_dicom(secret_dir / "secretfile_badjpeg.dcm", [b"\xff\xd8\xff" + b"\x01" * 300],
                                        JPEGBaseline8Bit, "YBR_FULL_422", H, W, frames=1)
    badmha = secret_dir / "secretfile_bad.mha"
    badmha.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
                      "ElementDataFile = secretfile_missing.raw\n")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for p in (good, bad_vr):
            for f in frames_of(p):
                texts.append(repr(f.info))
                assert set(f.info) <= {"photometric", "transfer_syntax"}
        for p in (nopix, cut, bad_value, bad_pi, junk, bad_jpeg, badpng, badmp4, badmha):
            err = rejection(p)
            texts += [err.detail, str(err), err.reason]
    texts += [str(w.message) for w in caught]
    texts += [r.getMessage() for r in caplog.records]
    assert not [r.name for r in caplog.records if r.name.split(".")[0] in ("pydicom", "PIL", "nibabel")]
    out, errs = capfd.readouterr()
    texts += [out, errs]
    blob = "\n".join(texts)
    for secret in forbidden:
        assert secret not in blob, secret
    assert "no_pixel_data" in blob and "truncated" in blob  # the rejections did happen


# ------------------------------------------------------------------------------------------
# volumes
# ------------------------------------------------------------------------------------------


def write_volume(tmp_path: Path, kind: str, vol: np.ndarray) -> Path:
    """vol is indexed (i, j, k[, t]) in every format: i = x (fastest on disk)."""
    import nibabel as nib
    import nrrd
    import SimpleITK as sitk

    if kind in ("nii", "nii.gz"):
        p = tmp_path / f"v.{kind}"
        nib.save(nib.Nifti1Image(vol, np.eye(4)), p)
    elif kind == "nrrd":
        p = tmp_path / "v.nrrd"
        nrrd.write(str(p), vol)  # Fortran index order: vol[i, j, k]
    elif kind in ("mha", "mhd"):
        p = tmp_path / f"v.{kind}"
        sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(vol.T), isVector=False), str(p))
    else:
        raise AssertionError(kind)
    return p


@pytest.mark.parametrize("kind", ["nii", "nii.gz", "nrrd", "mha", "mhd"])
def test_volume_slices_along_all_axes(tmp_path, kind):
    vol = volume_ijk()
    p = write_volume(tmp_path, kind, vol)
    assert detect_format(p) == "volume"
    frames = frames_of(p, volume_axes=(0, 1, 2))
    assert len(frames) == sum(vol.shape)
    for f in frames:
        # rows = the later remaining axis: an axial (axis 2) slice of (x, y, z) is (y, x)
        expected = np.take(vol, f.index, axis=f.axis).T
        assert f.pixels.dtype == np.int16
        np.testing.assert_array_equal(f.pixels, expected)
    assert [(f.axis, f.index) for f in frames[:3]] == [(0, 0), (0, 1), (0, 2)]
    assert frames[-1].axis == 2 and frames[-1].index == vol.shape[2] - 1


def test_volume_default_axis_stride_and_max_frames(tmp_path):
    p = write_volume(tmp_path, "nii", volume_axes_vol := volume_ijk((4, 5, 9)))
    assert [(f.axis, f.index) for f in frames_of(p)] == [(2, k) for k in range(9)]
    assert [f.index for f in frames_of(p, slice_stride=4)] == [0, 4, 8]
    assert [f.index for f in frames_of(p, volume_axes=(1,), max_frames=2)] == [0, 1]
    assert frames_of(p)[0].pixels.shape == (volume_axes_vol.shape[1], volume_axes_vol.shape[0])


def test_volume_4d_time_series(tmp_path):
    vol = np.stack([volume_ijk((3, 4, 5)) + 1000 * t for t in range(3)], axis=-1)  # (i, j, k, t)
    p = write_volume(tmp_path, "nii", vol)
    frames = frames_of(p)
    assert len(frames) == 3 * 5
    f = frames[7]  # t = 1, k = 2
    assert f.info == {"t": 1, "slice": 2} and f.index == 1 * 5 + 2 and f.axis == 2
    np.testing.assert_array_equal(f.pixels, vol[:, :, 2, 1].T)
    assert sorted({fr.info["t"] for fr in frames_of(p, frame_stride=2)}) == [0, 2]
    assert len({(fr.axis, fr.index) for fr in frames}) == len(frames)  # unique keys


def test_volume_4d_trailing_singleton_is_3d(tmp_path):
    vol = volume_ijk((3, 4, 5))[..., None]
    p = write_volume(tmp_path, "nii", vol)
    frames = frames_of(p)
    assert [f.index for f in frames] == list(range(5)) and all(f.info == {} for f in frames)


def test_volume_2d_image_and_2d_cine(tmp_path):
    img = volume_ijk((6, 7, 1))
    p = write_volume(tmp_path, "nii", img)
    (f,) = frames_of(p, volume_axes=(0, 1, 2))
    assert f.axis is None and f.index == 0
    np.testing.assert_array_equal(f.pixels, img[:, :, 0].T)
    cine = np.stack([img + t for t in range(4)], axis=-1)  # (i, j, 1, t)
    q = write_volume(tmp_path, "mha", cine)
    frames = frames_of(q, frame_stride=2)
    assert [f.index for f in frames] == [0, 2]
    np.testing.assert_array_equal(frames[1].pixels, cine[:, :, 0, 2].T)


def test_volume_float_nan_rejected(tmp_path):
    vol = volume_ijk().astype(np.float32)
    ok = write_volume(tmp_path, "nii", vol)
    assert frames_of(ok)[0].pixels.dtype == np.float32
    vol[2, 3, 4] = np.nan
    bad = write_volume(tmp_path, "nrrd", vol)
    assert rejection(bad, volume_axes=(0,)).reason == "non_finite"
    vol[2, 3, 4] = np.inf
    assert rejection(write_volume(tmp_path, "nii.gz", vol)).reason == "non_finite"


def test_volume_bomb_headers_rejected_before_reading(tmp_path):
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((30000, 30000, 2))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    nii = tmp_path / "bomb.nii"
    nii.write_bytes(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 1000)  # header claims 1.8 GB
    mha = tmp_path / "bomb.mha"
    mha.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 30000 30000 2\nElementType = MET_UCHAR\n"
                    b"ElementDataFile = LOCAL\n" + b"\x00" * 1000)
    for p in (nii, mha):
        err, peak = rejection_and_peak(p)
        assert err.reason == "too_large", p.name
        assert peak < 20_000_000


def test_volume_too_large_and_truncated(tmp_path):
    p = write_volume(tmp_path, "nii", volume_ijk((5, 6, 7)))
    assert rejection(p, max_pixels=29).reason == "too_large"  # axial slice = 30 pixels
    assert len(frames_of(p, max_pixels=30)) == 7
    data = p.read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(data[:-50])
    assert rejection(cut).reason == "truncated"


# ------------------------------------------------------------------------------------------
# video
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext,codec", [("mp4", "mpeg4"), ("avi", "mjpeg")])
def test_video_frames_stride_max(tmp_path, ext, codec):
    values = [16, 48, 80, 112, 144, 176, 208]
    p = write_video(tmp_path / f"v.{ext}", values, codec)
    frames = frames_of(p)
    assert len(frames) == len(values)
    assert all(f.pixels.shape == (48, 64, 3) and f.pixels.dtype == np.uint8 for f in frames)
    assert np.allclose([f.pixels.mean() for f in frames], values, atol=6)
    assert [f.index for f in frames_of(p, frame_stride=3)] == [0, 3, 6]
    assert [f.index for f in frames_of(p, frame_stride=2, max_frames=2)] == [0, 2]


def test_video_gray_pixel_format(tmp_path):
    import av

    p = tmp_path / "gray.avi"
    with av.open(str(p), "w") as out:
        stream = out.add_stream("ffv1", rate=5)
        stream.width, stream.height, stream.pix_fmt = W, H, "gray"
        frames = [gray8() for _ in range(3)]
        for g in frames:
            for pkt in stream.encode(av.VideoFrame.from_ndarray(g, format="gray")):
                out.mux(pkt)
        for pkt in stream.encode():
            out.mux(pkt)
    got = pixels_of(p)
    assert len(got) == 3
    for g, px in zip(frames, got):
        assert px.shape == (H, W)
        np.testing.assert_array_equal(px, g)  # ffv1 is lossless


def test_video_rejections(tmp_path):
    p = write_video(tmp_path / "v.mp4", [50, 60], "mpeg4")
    assert rejection(p, max_pixels=100).reason == "too_large"
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypisom" + RNG.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    assert detect_format(junk) == "video"
    assert rejection(junk).reason == "undecodable"
