"""Volumes sliced into 2D frames: NIfTI-1/2 and Analyze through nibabel, NRRD and MetaImage
through SimpleITK. The slice plan and every size check come from the header, before any voxel is
read; slices are read one at a time."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..frames import Frame, InputRejected, ReaderOptions
from .detect import is_nifti, read_head
from .guard import guard, undecodable
from .pixels import check_size, frame_pixels

# A volume that has to be held in memory whole (SimpleITK reads, or a gzip-compressed NIfTI
# sliced along an axis other than the last) may hold at most this many voxels (x components).
# 512 Mi voxels is e.g. 800^3 or a 1024^2 x 512 stack: big enough for any ultrasound volume,
# small enough that a forged header cannot make one worker allocate tens of gigabytes.
MAX_VOLUME_VOXELS = 1 << 29

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
        check_size(rows, cols, opts)
        image = tuple(0 if n == 1 else slice(None) for n in spatial)
        return (_SliceSpec(at(image, t), t) for t in times)

    axes = tuple(dict.fromkeys(opts.volume_axes))  # de-duplicated, order kept
    for axis in axes:
        cols, rows = [n for a, n in enumerate(spatial) if a != axis]
        check_size(rows, cols, opts)

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


def _open_nifti(path: Path) -> tuple[tuple[int, ...], Callable[[ReaderOptions], Any]]:
    """NIfTI-1/2 and Analyze via nibabel: (shape, load) where ``load(opts)`` returns data
    indexable in (i, j, k[, t]) order.  Uncompressed files are sliced through nibabel's
    ArrayProxy (memory-mapped reads, one slice at a time); a gzip stream cannot seek cheaply,
    so it is loaded once when it fits a quarter of the voxel budget, and beyond that sliced
    through the proxy along the last spatial axis only (install indexed_gzip to make those
    reads seekable)."""
    import nibabel as nib

    with guard(undecodable("The NIfTI file could not be read")):
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        proxy = img.dataobj
        dtype = img.get_data_dtype()
        offset = int(getattr(proxy, "offset", 0) or 0)
        data_file = Path(img.file_map["image"].filename or path)
    if dtype.names and not set("RGB").issubset(dtype.names):  # RGB24/RGBA32 structured voxels
        raise InputRejected("unsupported", "Structured voxel types other than RGB are not supported.")
    compressed = read_head(data_file, 2) == b"\x1f\x8b"

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
                with guard(undecodable("The volume data could not be read")):
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


def iter_volume(path: Path, opts: ReaderOptions) -> Iterator[Frame]:
    """Volumes: header -> slice plan and size checks -> data -> one slice at a time.
    Slices are checked for NaN/inf one at a time ("non_finite")."""
    shape, load = _open_nifti(path) if is_nifti(path) else _open_itk(path)
    plan = _plan_slices(shape, opts)
    data = load(opts)
    read_error = undecodable("A volume slice could not be read")
    for spec in plan:
        with guard(read_error):
            sl = _slice_2d(data, spec.index)
        yield Frame(frame_pixels(sl), index=spec.frame_index, axis=spec.axis, info=dict(spec.info))
