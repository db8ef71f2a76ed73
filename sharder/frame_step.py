"""The per-frame step: one source's decoded frames -> curated, encoded, hashed samples.

    read (sharder.readers) -> crop targets (scanner regions, else pixel detection) -> curate
    (crop, gray, de-annotate, resize) -> text gate -> encode -> pHash -> pixel hash + sums

``usf-shard build`` runs it in its extract workers (sharder/build.py: one :class:`FrameStep`
per input) and ``benchmarks/throughput.py shard`` times its stages (a :class:`StageClock`): the
chain exists once, so the benchmark measures what the build does.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codec import encode
from .curate import CurateOptions, Curated, curate, find_scan_region
from .dedup import phash64, pixel_hash
from .frames import Frame, InputRejected, ReaderOptions
from .intensity import gray_u8
from .readers import iter_frames
from .regions import refit_regions, regions_of, select_image_regions
from .textgate import SourceGate

# cine loops and videos keep the probe's footprint on every frame: the scan region is found once
# per source and reused (volumes are not: slices along other axes differ)
REUSE_BOX_FORMATS = ("dicom", "video")
# the ops of a crop worth reusing (not "crop:none_found", "crop:reused" or a mismatch)
_REUSABLE_CROPS = ("crop:auto", "crop:region", "crop:region_refined")
# the stages a clock times for every frame (and "text_gate": the gate's time, ~0 when it is off)
STAGES = ("decode", "curate", "phash", "encode", "hash_stats")

Clock = Callable[[str], AbstractContextManager]


def no_clock(stage: str) -> AbstractContextManager:
    """The build's clock: times nothing."""
    return nullcontext()


class StageClock:
    """Seconds spent in each stage, summed over calls; pass it as a :class:`FrameStep`'s clock."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0


@dataclass
class Sample:
    """One curated frame, ready for a shard.

    frame: as the reader made it (index, axis, group hint, source shape). seq: its position
    among the source's decoded frames. region: the scanner image region it was cropped from
    (dual view: 0, 1; 0 for everything else). cur: the curated frame (``image`` (h, w) uint8).
    data: ``image`` encoded with the dataset's codec. xh, ph: pixel hash and 64-bit pHash
    (dedup). sums: :func:`pixel_sums` of ``image`` (the manifest's mean/std).
    """

    frame: Frame
    seq: int
    region: int
    cur: Curated
    data: bytes
    xh: str
    ph: int
    sums: tuple[float, float, int]


@dataclass
class FrameRejected:
    """One target of one frame dropped by curation or the text gate (the source goes on)."""

    seq: int
    region: int
    error: InputRejected


class FrameStep:
    """The per-frame step for one source of format ``fmt``.

    copts: curation options. codec, jpeg_quality: the shard encoding. text_policy, text_every:
    the text gate (``"off"``: no gate; see :class:`~sharder.textgate.SourceGate`). clock: times
    each stage (``STAGES``); the build's times nothing.
    After :meth:`samples` (even one that raised), ``frames`` is the number of frames the reader
    yielded and ``gate`` holds the gate's counts.
    """

    def __init__(self, fmt: str, copts: CurateOptions, codec: str = "jpg", jpeg_quality: int = 95,
                 text_policy: str = "off", text_every: int = 16, clock: Clock = no_clock):
        self.fmt, self.copts, self.codec, self.jpeg_quality, self.clock = fmt, copts, codec, jpeg_quality, clock
        self.reuse_box = fmt in REUSE_BOX_FORMATS
        # volume slices are cropped one by one (their boxes differ by nature, and volumes have no
        # display layer): they are sampled by the schedule alone, not re-checked per new box
        self.gate = SourceGate(text_policy, text_every, track_box=self.reuse_box)
        self.frames = 0

    def samples(self, path: Path, ropts: ReaderOptions) -> Iterator[Sample | FrameRejected]:
        """For each frame the reader yields and each of its crop targets, in order: a Sample, or a
        FrameRejected. Raises InputRejected when the input itself fails (after the frames
        yielded so far, which stay valid)."""
        boxes: dict[int, tuple] = {}  # target (scanner region index) -> crop box reused across frames
        box_shape = None
        targets: list[tuple[int, tuple | None]] = []
        region_op = None
        frames = iter_frames(path, self.fmt, ropts)
        try:
            while True:
                with self.clock("decode"):
                    frame = next(frames, None)
                if frame is None:
                    return
                seq = self.frames
                self.frames += 1
                shape = frame.pixels.shape[:2]
                if shape != box_shape:
                    boxes.clear()
                    with self.clock("curate"):
                        targets, region_op = crop_targets(frame, shape, self.copts.crop_mode)
                    box_shape = shape
                    self.gate.new_geometry(frame.n_frames)
                for j, within in targets:
                    try:
                        with self.clock("curate"):
                            cur = _curate_target(frame.pixels, self.copts, boxes.get(j), within, region_op)
                        with self.clock("text_gate"):
                            self.gate.check(seq, j, cur)
                    except InputRejected as e:
                        yield FrameRejected(seq, j, e)
                        continue
                    if self.reuse_box and j not in boxes and any(op in cur.ops for op in _REUSABLE_CROPS):
                        boxes[j] = cur.crop
                    yield self._finish(frame, seq, j, cur)
        finally:
            frames.close()  # releases the reader's file now, not at garbage collection

    def _finish(self, frame: Frame, seq: int, region: int, cur: Curated) -> Sample:
        """Encode and hash one curated frame."""
        img = cur.image
        with self.clock("encode"):
            data = encode(img, self.codec, self.jpeg_quality)
        with self.clock("phash"):
            ph = phash64(img)
        with self.clock("hash_stats"):
            xh, sums = pixel_hash(img), pixel_sums(img)
        return Sample(frame, seq, region, cur, data, xh, ph, sums)


def _curate_target(pixels: np.ndarray, copts: CurateOptions, box: tuple | None, within: tuple | None,
                   region_op: str | None) -> Curated:
    """curate() one crop target; ``region_op`` (how the scanner regions were used) is recorded
    just before the crop step it explains."""
    cur = curate(pixels, copts, box=box, within=within)
    if region_op:
        at = next((k for k, op in enumerate(cur.ops) if op.startswith("crop:")), 0)
        cur.ops.insert(at, region_op)
    return cur


def crop_targets(frame: Frame, shape: tuple[int, int],
                 crop_mode: str) -> tuple[list[tuple[int, tuple | None]], str | None]:
    """What to crop from a frame of this geometry: [(region index, scanner region box | None)]
    and an op to record. A DICOM with usable SequenceOfUltrasoundRegions gives one target per
    image region (dual view: two samples per frame); regions that do not fit the pixels are
    ignored (op ``crop:region_mismatch``) and pixel detection is used, as for every other file."""
    if crop_mode != "auto":
        return [(0, None)], None
    regions = regions_of(frame)
    boxes, status = select_image_regions(regions, shape)
    if status == "ok":
        return list(enumerate(boxes)), None
    if status != "mismatch":
        return [(0, None)], None
    # the pixels were cut or resampled after the header was written: a refit is used only when
    # the tissue the pixels show lies inside it (else pixel detection, as for any other file)
    refit, how = refit_regions(regions, shape)
    boxes, status = select_image_regions(refit, shape) if refit else ([], "none")
    if status == "ok":
        ty0, tx0, ty1, tx1 = find_scan_region(gray_u8(frame.pixels)[0])
        sy, sx = max(4, shape[0] // 20), max(4, shape[1] // 20)  # 5% slack
        if any(ty0 >= y0 - sy and tx0 >= x0 - sx and ty1 <= y1 + sy and tx1 <= x1 + sx
               for y0, x0, y1, x1 in boxes):
            return list(enumerate(boxes)), f"crop:region_{how}"
    return [(0, None)], "crop:region_mismatch"


def frame_crops(frame: Frame, copts: CurateOptions) -> list[tuple[int, Curated]]:
    """[(region index, Curated)] for one frame, exactly as the build crops it (scanner regions
    first, pixel detection otherwise). For audits and benchmarks (real-file IoU)."""
    targets, region_op = crop_targets(frame, frame.pixels.shape[:2], copts.crop_mode)
    return [(j, _curate_target(frame.pixels, copts, None, within, region_op)) for j, within in targets]


def pixel_sums(img: np.ndarray) -> tuple[float, float, int]:
    """(sum, sum of squares, count) of an (h, w) uint8 frame's pixels scaled to [0, 1], for the
    manifest's mean/std; summed as exact integers (no BLAS threads, no float temporaries)."""
    u = img.reshape(-1).astype(np.uint32)
    return int(u.sum(dtype=np.uint64)) / 255.0, int(np.square(u).sum(dtype=np.uint64)) / 65025.0, int(u.size)


__all__ = ["REUSE_BOX_FORMATS", "STAGES", "FrameRejected", "FrameStep", "Sample", "StageClock",
           "crop_targets", "frame_crops", "no_clock", "pixel_sums"]
