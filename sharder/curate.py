"""Turn one raw decoded frame into a clean training frame.

Pipeline (each applied step is named in ``Curated.ops``, in order):

1. ``to_uint8:*``     16-bit / float / wide-int pixels -> uint8 with a robust window (skipped for uint8).
2. ``gray:luma``       RGB -> gray by ITU-R BT.601 luma (only for colour inputs).
3. ``crop:region`` / ``crop:region_refined``  crop to the scanner's own image region (DICOM
   SequenceOfUltrasoundRegions), refined against its pixels; else ``crop:auto``: crop to the
   scan region found in the pixels (the speckled sector / rectangle), dropping the banner, side
   bars, depth ticks and ECG trace; ``crop:none_found`` when no region was found and the full
   frame is kept.
4. ``colour:inpaint``  (``colour_policy="suppress_doppler"``) coloured pixels inpainted from gray.
5. ``deannotate``      (``deannotate=True``) burned-in text, calipers and thin colour overlays inpainted.
6. ``resize:N`` / ``resize:N:up``  short side resized to ``short_side``.

Rejections raise ``InputRejected`` with reason ``"too_small"``, ``"blank"``, ``"colour"`` or
``"bad_shape"``. Everything is vectorised OpenCV/numpy: one core spends ~16 ms on a 600x800 frame
(~23 ms with ``deannotate``), ~60 ms on 1080x1920.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .frames import InputRejected
from .intensity import to_uint8  # the one 8-bit conversion every path shares

CROP_MODES = ("auto", "none")
COLOUR_POLICIES = ("luma", "suppress_doppler", "reject_colour")

# --- scan region ----------------------------------------------------------------------------
_BG_PERCENTILE = 1.0  # the background (black margins, or the darkest tissue when there are none)
_BG_DELTA = 10.0  # foreground = denoised gray > background level + this (0..255) ...
_BG_DELTA_CLEAN = 3.0  # ... or this when the margin is digitally clean (exactly one level):
# real scanners draw an image with no echoes (probe in air, a dark near field, low gain) at
# 1-9 gray levels over a margin of exact 0 (measured: Terason 5-9, Philips 1-3); a video capture's
# black is noisy (+-3) and keeps the wide delta
_CLEAN_BG_FRAC = 0.25  # "digitally clean": >= this share of the frame sits exactly at the level
_CLEAN_BG_NOISE = 0.5  # ... and the 5x5 variance of those pixels is below this
_MIN_REGION_FRAC = 0.02  # a scan region smaller than this share of the frame is "not found"
# (0.03 before; a curvilinear probe in air shows only its 250x85 px arc on 800x600: 0.029)
_MERGE_MIN_FRAC = 0.03  # fragments (split off by dark fluid) merged if >= this share of the main part
_MERGE_MAX_GAP_FRAC = 0.45  # ... and at most this share of the frame height away, vertically
# (0.2 was tuned on the phantom; a real linear image with an echo-free middle third, reverberation
# at the top and speckle at the bottom, measured 0.38 of the frame height; the column-span rule
# below is what keeps banners and side panels out, not the gap)
_MARGIN_BG_FRAC = 0.7  # a strip cut off the frame must be >= 70% margin-like, else snap back
_CUT_MARK_FRAC = 0.01  # ... and only cuts off strips that hold marks (text, bars), see _holds_marks
# (measured share of bright pixels in the cut strips: 0.035-0.055 with vendor text columns,
# 0.003 for a SonoSite fan whose only marks are a few marker dots)
_BANNER_MIN_WIDTH = 0.9  # a component this wide (share of the frame) ...
_BANNER_MAX_HEIGHT = 0.2  # ... this low and on the top/bottom edge is a banner bar (Philips: 60 px)
_REFINE_MIN_FRAC = 0.5  # a refined scanner region keeps >= this share of the region's area
_STRIP_MAX_FRAC = 0.12  # a side strip (scale bar) trimmed off the box is at most this share of it
_SEPARATOR_FRAC = 0.97  # a line this margin-like along a whole side of the box separates it
_FLAT_VAR = 2.25  # 5x5 variance below this (std 1.5) is flat: margins are, speckle never is
_DIM_MAX_DELTA = 30.0  # dim tissue has no pixel brighter than threshold + this within 5 px
_DIM_MIN_DELTA = 3.0  # ... and its 5x5 mean is this much above the margin level
_MIN_FLAT_FRAC = 0.005  # less flat background than this: the frame has no margins
_MOSTLY_BG_FRAC = 0.9  # no region found and this much background: only annotations -> blank

# --- colour ---------------------------------------------------------------------------------
_COLOUR_MIN_SAT = 128  # HSV saturation (0..255): Doppler red/blue ~255, sepia-tinted B-mode ~100

# --- de-annotation --------------------------------------------------------------------------
_MARK_MIN_LEVEL = 215  # burned-in marks are drawn near white (yellow text has luma 226)
_MARK_CONTRAST = 70  # ... and far brighter than the local median (a thin mark never is the median)
_MARK_BG_KSIZE = 15  # median window: a mark (even the crossing of a thick "+") is < half of it
_MARK_MIN_LEN = 10  # marks are elongated: a '+' (arms >= 5 px), a letter, a dash ...; speckle peaks
# that clip at 255 are mostly shorter (measured: <= 0.03% of pixels of a frame with 0.4% clipped
# speckle are taken, 0.25% when 3% of the speckle clips)
_MARK_MAX_HALF = 3.0  # ... and thin: distance-transform max ~ half thickness (2.8 where 3 px lines cross)
_INPAINT_RADIUS = 3


@dataclass
class CurateOptions:
    """How to curate frames of one dataset.

    crop_mode: ``"auto"`` finds the scan region (see :func:`find_scan_region`); ``"none"`` keeps
        the frame as it is (already-cropped datasets, or when the heuristic is unwanted).
    colour_policy: what to do with RGB inputs. Default ``"luma"``: RGB -> gray by ITU-R BT.601
        luma (0.299 R + 0.587 G + 0.114 B). B-mode is gray, and nearly every RGB ultrasound frame
        is gray stored as RGB (R = G = B), for which luma is exact and lossless; it never invents
        pixels and costs nothing. The minority of colour-Doppler frames keep their box as a
        gray-ish luma patch, which is why the other policies exist for datasets known to carry
        Doppler: ``"suppress_doppler"`` replaces strongly coloured pixels (high HSV saturation:
        Doppler boxes, colour overlays) by inpainting the surrounding gray (large boxes become
        smooth patches: prefer ``"reject_colour"`` when such frames are plentiful);
        ``"reject_colour"`` rejects frames whose scan region has >= ``colour_max_frac`` coloured
        pixels (small coloured calipers/text pass, and ``deannotate`` removes them).
    deannotate: inpaint burned-in text, calipers, dotted lines and thin colour overlays inside the
        crop (USF-MAE removed them too). Conservative: only near-white or coloured, thin and
        elongated structures are masked, so speckle survives.
    short_side: the output short side, exactly (the shard size policy). Shrinking uses
        ``cv2.INTER_AREA``; enlarging ``cv2.INTER_CUBIC``, at most ``max_upscale`` times.
    max_upscale: crops needing more enlargement than this are rejected ``"too_small"``: heavy
        upscaling only teaches the model blur. The default 4.0 matches 256 / ``min_side``, so with
        defaults ``min_side`` is the one effective bound (a scanner crop is rarely < 256 anyway).
    min_side: crops with a short side below this are rejected ``"too_small"``.
    blank_std: crops whose gray std (0..255) is below this are rejected ``"blank"``.
    colour_chroma: a pixel is "coloured" when max(R,G,B) - min(R,G,B) >= this (JPEG chroma noise
        on gray frames stays well below) and its HSV saturation >= 50%.
    colour_max_frac: ``reject_colour`` threshold, share of coloured pixels in the scan region.
    """

    crop_mode: str = "auto"
    colour_policy: str = "luma"
    deannotate: bool = False
    short_side: int = 256
    min_side: int = 64
    blank_std: float = 2.0
    max_upscale: float = 4.0
    colour_chroma: int = 40
    colour_max_frac: float = 0.005

    def __post_init__(self) -> None:
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.colour_policy not in COLOUR_POLICIES:
            raise ValueError(f"colour_policy must be one of {COLOUR_POLICIES}, got {self.colour_policy!r}")
        if self.short_side < 1 or self.min_side < 1 or self.max_upscale < 1.0:
            raise ValueError("short_side and min_side must be >= 1, max_upscale >= 1.0")


@dataclass
class Curated:
    """A curated frame.

    image: (h, w) uint8 gray, min(h, w) == short_side.
    crop: (y0, x0, y1, x1) box in SOURCE pixels, end-exclusive (``src[y0:y1, x0:x1]``).
    ops: curation steps applied, in order (see the module docstring).
    """

    image: np.ndarray
    crop: tuple[int, int, int, int]
    ops: list[str] = field(default_factory=list)


# ============================================================================================
# public API
# ============================================================================================
def curate(pixels: np.ndarray, opts: CurateOptions | None = None,
           box: tuple[int, int, int, int] | None = None,
           within: tuple[int, int, int, int] | None = None) -> Curated:
    """Curate one frame. pixels: (H, W) gray of any numeric dtype, or (H, W, 3|4) RGB(A).

    box: a scan region already found for this source (every frame of a cine loop, volume or
    video shares the probe's footprint): reused instead of searched again (op "crop:reused").
    within: the scanner's own image region (DICOM SequenceOfUltrasoundRegions, see
    sharder/regions.py), (y0, x0, y1, x1): the crop never leaves it, and is refined against the
    pixels inside it (op "crop:region_refined"; some vendors' regions span the text columns
    beside the image) or taken as it is (op "crop:region") when the pixels do not show the
    image's outline (probe in air, faint fan).
    Raises InputRejected("too_small" | "blank" | "colour" | "bad_shape", detail).
    """
    opts = opts or CurateOptions()
    img = _as_image(pixels, opts.min_side)
    ops: list[str] = []

    img, op = to_uint8(img)
    if op != "to_uint8:none":
        ops.append(op)

    colour = None
    if img.ndim == 3:
        # the colour mask is only needed by the policies that act on colour (it costs ~20 ms)
        if opts.colour_policy != "luma" or opts.deannotate:
            colour = colour_mask(img, opts.colour_chroma)
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)  # BT.601 luma
        ops.append("gray:luma")

    if box is not None and opts.crop_mode == "auto":
        ops.append("crop:reused")
    elif within is not None and opts.crop_mode == "auto":
        box, op = _refine_region(img, within)
        ops.append(op)
    elif opts.crop_mode == "auto":
        box, found, bg_frac = _scan_region(img)
        if not found and bg_frac >= _MOSTLY_BG_FRAC:
            raise InputRejected("blank", f"no scan region: {bg_frac:.0%} of the frame is background")
        ops.append("crop:auto" if found else "crop:none_found")
    else:
        box = (0, 0, img.shape[0], img.shape[1])
    y0, x0, y1, x1 = box
    gray = img[y0:y1, x0:x1]
    colour = colour[y0:y1, x0:x1] if colour is not None else None

    _check_size(gray.shape, opts)
    std = float(gray.std())
    if std < opts.blank_std:
        raise InputRejected("blank", f"scan region std {std:.2f} < {opts.blank_std}")

    if colour is not None and opts.colour_policy == "reject_colour":
        frac = float(colour.mean())
        if frac >= opts.colour_max_frac:
            raise InputRejected("colour", f"{frac:.1%} of the scan region is coloured")
    if colour is not None and opts.colour_policy == "suppress_doppler" and colour.any():
        # dilate: JPEG chroma subsampling smears colour edges by a pixel or two
        mask = cv2.dilate(colour.astype(np.uint8), np.ones((5, 5), np.uint8))
        gray = cv2.inpaint(np.ascontiguousarray(gray), mask, _INPAINT_RADIUS, cv2.INPAINT_TELEA)
        colour = None  # nothing coloured left for deannotate to find
        ops.append("colour:inpaint")

    if opts.deannotate:
        gray, removed = deannotate(gray, colour)
        if removed.any():
            ops.append("deannotate")

    gray, op = _resize_short(gray, opts.short_side)
    if op:
        ops.append(op)
    return Curated(image=np.ascontiguousarray(gray), crop=box, ops=ops)


def find_scan_region(gray: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (y0, x0, y1, x1), end-exclusive, of the tissue region of a scanner frame.

    gray: (H, W) uint8. Returns the whole frame when no region is found or when the frame has no
    background margins (an already-cropped image). See :func:`_scan_region` for the method.
    """
    return _scan_region(gray)[0]


def colour_mask(rgb: np.ndarray, min_chroma: int = 40) -> np.ndarray:
    """(H, W) bool: strongly coloured pixels of an (H, W, 3) uint8 RGB image.

    Coloured = chroma (max - min channel) >= min_chroma AND HSV saturation >= 50%. The chroma
    floor ignores JPEG chroma noise and dark pixels (whose saturation is noise); the saturation
    floor ignores tinted (sepia/bronze colour-mapped) B-mode, which luma handles correctly.
    """
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    chroma = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    return (chroma >= min_chroma) & (hsv[..., 1] >= _COLOUR_MIN_SAT)


def deannotate(gray: np.ndarray, colour: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inpaint burned-in marks; returns (cleaned (H, W) uint8, removed (H, W) bool mask).

    gray: (H, W) uint8 (the crop). colour: optional (H, W) bool coloured-pixel mask of the same
    crop (see :func:`colour_mask`). Marks are connected structures that are thin (half thickness
    <= 3 px) and elongated (>= 10 px long) and either near-white and much brighter than their
    local median (white/yellow text, '+' calipers, dashes, cine markers) or coloured (green
    calipers, coloured text). Speckle grains are compact blobs, bright reflectors are thick or
    not saturated, Doppler blobs are not thin: they all survive.
    """
    g = np.ascontiguousarray(gray)
    bright = g >= _MARK_MIN_LEVEL
    if bright.any():
        bright &= g.astype(np.int16) - _local_median(g) >= _MARK_CONTRAST
    mask = _thin_components(bright)
    if colour is not None and colour.any():
        mask |= _thin_components(colour)
    if not mask.any():
        return g, mask
    # one pixel more on each side: anti-aliased edges and JPEG halos of the strokes
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    return cv2.inpaint(g, grown, _INPAINT_RADIUS, cv2.INPAINT_TELEA), grown.astype(bool)


# ============================================================================================
# helpers
# ============================================================================================
def _local_median(g: np.ndarray) -> np.ndarray:
    """(H, W) uint8 local background: the median over ~_MARK_BG_KSIZE px, computed at half size.

    A thin mark is < half of any window, so it never is the median. Half size because a 15x15
    median costs ~30 ms on a 600x800 frame and the background is smooth anyway.
    """
    h, w = g.shape
    if min(h, w) < 4 * _MARK_BG_KSIZE:
        return cv2.medianBlur(g, _MARK_BG_KSIZE)
    half = cv2.resize(g, ((w + 1) // 2, (h + 1) // 2), interpolation=cv2.INTER_AREA)
    med = cv2.medianBlur(half, _odd(_MARK_BG_KSIZE / 2))
    return cv2.resize(med, (w, h), interpolation=cv2.INTER_LINEAR)


def _as_image(pixels: np.ndarray, min_side: int) -> np.ndarray:
    """Validate and normalise the layout: (H, W) or (H, W, 3); alpha and singleton channels dropped."""
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise InputRejected("bad_shape", f"expected (H, W) or (H, W, 3) pixels, got shape {a.shape}")
    if min(a.shape[:2]) < min_side:
        raise InputRejected("too_small", f"frame {a.shape[0]}x{a.shape[1]} < min_side {min_side}")
    return a


def _odd(n: float) -> int:
    n = round(float(n))
    return n if n % 2 else n + 1


def _scan_region(gray: np.ndarray) -> tuple[tuple[int, int, int, int], bool, float]:
    """Find the scan region; returns (box, found, background share of the frame).

    Method, on an (H, W) uint8 frame:
    1. 5x5 median: removes speckle holes and 1-2 px strokes (thin text, ticks) in one go.
    2. foreground = median > (1st percentile + 10): the black margins are the background; a frame
       without margins gets its darkest tissue as "background", so nearly everything is foreground.
    3. opening with a square of ~min(H, W)/35 px (>= 5): erases anything thinner than that — banner
       and label text, depth ticks, ECG traces, calipers — while the sector/rectangle, hundreds of
       pixels across, keeps its outline (opening preserves half-planes; only the apex tip of a
       phased-array fan, narrower than the square, is lost).
    4. the largest connected component is the scan region; other big components lying within its
       column span and close above/below are merged (a full-width dark bladder or cardiac chamber
       can split the sector in two). Full-width banner bars, side bars and a second image of a
       dual view lie outside that span and are not merged.
    5. regrow: foreground within one kernel size of the region and 4-connected to it is added
       back (what the opening shaved off the apex and corners); annotations separated from the
       tissue by background, even by a few pixels, are not connected and stay out.
    6. each side of the box is snapped back to the frame edge unless the strip it cuts off is
       >= 70% margin-like: frames with no margins (already-cropped ROIs) keep the whole
       frame, even when a dim near field or an attenuated border fell below the threshold.
    """
    h, w = gray.shape
    full = (0, 0, h, w)
    den = cv2.medianBlur(np.ascontiguousarray(gray), 5)
    step = max(1, min(h, w) // 256)  # the 1st percentile of a regular subsample is as good
    sample = den[::step, ::step]
    level = float(np.percentile(sample, _BG_PERCENTILE))
    thresh = level + _bg_delta(gray[::step, ::step], level)
    fg = (den > thresh).astype(np.uint8)
    bg_frac = 1.0 - float(fg.mean())

    k = _odd(np.clip(min(h, w) / 35.0, 5, 51))
    opened = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_RECT, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    if n <= 1:
        return full, False, bg_frac
    stats = stats[1:]
    areas = stats[:, cv2.CC_STAT_AREA].copy()
    # a filled patient banner (a full-width bar along the top or bottom edge) is never the image,
    # even when it outweighs a dark one (a probe-in-air arc under a Philips banner)
    top, height = stats[:, cv2.CC_STAT_TOP], stats[:, cv2.CC_STAT_HEIGHT]
    banner = ((stats[:, cv2.CC_STAT_WIDTH] >= _BANNER_MIN_WIDTH * w) & (height <= _BANNER_MAX_HEIGHT * h)
              & ((top == 0) | (top + height == h)))
    areas[banner] = 0
    main = int(np.argmax(areas))
    if areas[main] < _MIN_REGION_FRAC * h * w:
        return full, False, bg_frac

    x0, y0 = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    x1, y1 = x0 + stats[:, cv2.CC_STAT_WIDTH], y0 + stats[:, cv2.CC_STAT_HEIGHT]
    gap = np.maximum(y0 - y1[main], y0[main] - y1)  # vertical gap to the main part (<0: overlap)
    keep = (
        (areas >= _MERGE_MIN_FRAC * areas[main])
        & (x0 >= x0[main] - k)
        & (x1 <= x1[main] + k)
        & (gap <= _MERGE_MAX_GAP_FRAC * h)
    )
    keep[main] = True
    if keep.sum() == 1:  # the common case: one comparison is 20x cheaper than a lookup
        core = labels == main + 1
    else:
        core = np.take(np.concatenate([[False], keep]), labels)  # label -> kept
    # regrow only into pixels that clear the wide threshold: with the clean-margin threshold,
    # JPEG ringing around banner text (1-4 levels over a black of 0) would bridge banner and image
    region = _regrow(core, fg if thresh >= level + _BG_DELTA else (den > level + _BG_DELTA).astype(np.uint8), k) | core
    rows, cols = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
    box = [int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1]
    margin, flat_bg = _margin_mask(gray, fg, thresh)
    box = _snap_to_edges(box, margin, flat_bg, 2 * k)
    return _trim_side_strips(box, margin), True, bg_frac


def _refine_region(gray: np.ndarray, region: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int], str]:
    """(box, op): the scan region found inside a scanner region, or the scanner region itself.

    The refinement is kept only when it covers >= _REFINE_MIN_FRAC of the region: less means the
    detector saw only part of the image (a reverberation band of a probe in air, the bright
    part of a faint fan), and the scanner's region is the better evidence.
    """
    h, w = gray.shape[:2]
    y0, x0, y1, x1 = max(0, region[0]), max(0, region[1]), min(h, region[2]), min(w, region[3])
    crop = np.ascontiguousarray(gray[y0:y1, x0:x1])
    inner, found, _ = _scan_region(crop)
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    if found and area >= _REFINE_MIN_FRAC * (y1 - y0) * (x1 - x0) and _holds_marks(crop, inner):
        return (y0 + inner[0], x0 + inner[1], y0 + inner[2], x0 + inner[3]), "crop:region_refined"
    return (y0, x0, y1, x1), "crop:region"


def _holds_marks(crop: np.ndarray, inner: tuple[int, int, int, int]) -> bool:
    """Whether what a refinement would cut off the scanner region holds anything (text, bars,
    markers: >= _CUT_MARK_FRAC bright pixels). When it is empty black, the region is kept
    whole: a phased-array fan's flanks are often echo-free and darker than any threshold
    (a SonoSite cardiac fan: the visible heart is half the fan's width)."""
    keep = np.zeros(crop.shape[:2], bool)
    keep[inner[0]:inner[2], inner[1]:inner[3]] = True
    cut = crop[~keep]
    if cut.size == 0:
        return False
    level = float(np.percentile(crop[::2, ::2], _BG_PERCENTILE))
    return float((cut > level + 4 * _BG_DELTA).mean()) >= _CUT_MARK_FRAC


def _bg_delta(sample: np.ndarray, level: float) -> float:
    """Foreground threshold above the background level, from how clean the margin is.

    sample: (h, w) uint8 subsample of the raw frame. A screen capture of a scanner's own output
    (DICOM secondary capture, exported PNG) has margins at exactly one value: then an echo-poor
    image a few levels above it is still the image, and the threshold is level + 3. A noisy
    black (analogue video grabber, JPEG) needs level + 10 to stay out of the foreground.
    """
    at_level = sample == int(round(level))
    if float(at_level.mean()) < _CLEAN_BG_FRAC:
        return _BG_DELTA
    g = sample.astype(np.float32)
    mean = cv2.blur(g, (5, 5))
    var = cv2.blur(g * g, (5, 5)) - mean * mean
    return _BG_DELTA_CLEAN if float(np.median(var[at_level])) < _CLEAN_BG_NOISE else _BG_DELTA


def _regrow(core: np.ndarray, fg: np.ndarray, k: int) -> np.ndarray:
    """(H, W) bool: core plus the foreground within k px of it that is 4-connected to it.

    Gives back what the opening shaved off (the apex tip of a fan, the acute bottom corners)
    without reaching anything separated from the tissue by background — a banner a few pixels
    above the sector stays out, because its pixels are not connected to the sector's.
    """
    near = cv2.dilate(core.view(np.uint8), cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))) & fg
    n, labels = cv2.connectedComponents(near, connectivity=4)
    touched = np.bincount(labels[core], minlength=n) > 0  # components holding a core pixel
    touched[0] = False
    return np.take(touched, labels)


def _margin_mask(gray: np.ndarray, fg: np.ndarray, thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """(margin, flat background), both (H, W) bool: pixels that look like scanner margin rather
    than tissue, and the subset that is flat background (no texture at all).

    Tissue is the foreground, plus dim tissue below the threshold (a dark near field, an
    attenuated border): dim speckle is a few levels above the background on average, never flat
    (5x5 std >= 1.5), and has no bright pixel near it. Margins are flat at the background level —
    a noisy video-capture black is at the level on average — and where they are not flat it is
    next to bright annotation strokes (text, ticks, with their JPEG ringing up to ~5 px away).
    """
    g = gray.astype(np.float32)
    mean = cv2.blur(g, (5, 5))
    var = cv2.blur(g * g, (5, 5)) - mean * mean
    flat_bg = (var < _FLAT_VAR) & (fg == 0)
    # the margin level, from flat background only: dim tissue must not set it (frames without
    # margins have next to no flat background; then every dim, textured pixel is tissue)
    sub = mean[::2, ::2][flat_bg[::2, ::2]]
    level = float(np.median(sub)) if sub.size >= _MIN_FLAT_FRAC * mean.size / 4 else -np.inf
    near_bright = cv2.dilate(gray, np.ones((11, 11), np.uint8)) >= thresh + _DIM_MAX_DELTA
    dim_tissue = (fg == 0) & (mean > level + _DIM_MIN_DELTA) & ~flat_bg & ~near_bright
    return (fg == 0) & ~dim_tissue, flat_bg


def _snap_to_edges(box: list[int], margin: np.ndarray, flat: np.ndarray,
                   reach: int) -> tuple[int, int, int, int]:
    """Extend each side of box to the frame edge unless the strip it cuts off is mostly margin,
    or is separated from the box by a clean margin line.

    margin: (H, W) bool (see _margin_mask). A real margin (black, with some text or ticks) stays
    cut; a strip of tissue — the box fell a few pixels short, or the frame has no margins and a
    dim border — does not. flat: (H, W) bool flat background. reach: how far (px) from the box
    a separating line is looked for. A full-width patient banner (a filled gray bar with text,
    not margin-like at all) sits on real scanners a few pixels above the image with a black line
    between: that line, flat background along the box's whole side, is what separates it (the
    phantom's banners were on black). A dim tissue border is textured, never such a line.
    """
    h, w = margin.shape
    y0, x0, y1, x1 = box

    def cut_ok(strip: np.ndarray, lines: np.ndarray) -> bool:
        if strip.size == 0 or float(strip.mean()) >= _MARGIN_BG_FRAC:
            return True
        return lines.size > 0 and bool((lines.mean(axis=1) >= _SEPARATOR_FRAC).any())

    if not cut_ok(margin[:y0, :], flat[max(0, y0 - reach):y0, x0:x1]):
        y0 = 0
    if not cut_ok(margin[y1:, :], flat[y1:y1 + reach, x0:x1]):
        y1 = h
    if not cut_ok(margin[y0:y1, :x0], flat[y0:y1, max(0, x0 - reach):x0].T):
        x0 = 0
    if not cut_ok(margin[y0:y1, x1:], flat[y0:y1, x1:x1 + reach].T):
        x1 = w
    return y0, x0, y1, x1


def _trim_side_strips(box: tuple[int, int, int, int], margin: np.ndarray) -> tuple[int, int, int, int]:
    """Cut a narrow strip off a side of the box when it is mostly margin and the image starts
    abruptly after it: a column of focus/depth markers or a scale bar that touches the image
    (GE's linear image: focus triangles and power-Doppler bars bridge margin and image, and the
    box took 7 px of margin with them).

    Occupancy of a column (row) = share of its pixels inside the box that are not margin-like
    (tissue, including dim tissue). A strip of <= _STRIP_MAX_FRAC of the box whose mean occupancy
    is < 0.5, followed by a line >= 0.9 occupied, is cut. A fan's flank rises gradually and
    has no such step; an already-cropped frame is occupied everywhere.
    """
    y0, x0, y1, x1 = box
    inner = ~margin[y0:y1, x0:x1]
    out = [y0, x0, y1, x1]
    for axis, (lo, hi) in ((0, (1, 3)), (1, (0, 2))):  # columns set x0/x1, rows set y0/y1
        occ = inner.mean(axis=axis)
        n = occ.size
        reach = int(n * _STRIP_MAX_FRAC)
        if n < 20 or reach < 3:
            continue
        full = np.nonzero(occ[:reach] >= 0.9)[0]
        if full.size and full[0] >= 3 and float(occ[:full[0]].mean()) < 0.5:
            out[lo] += int(full[0])
        full = np.nonzero(occ[::-1][:reach] >= 0.9)[0]
        if full.size and full[0] >= 3 and float(occ[n - full[0]:].mean()) < 0.5:
            out[hi] -= int(full[0])
    return out[0], out[1], out[2], out[3]


def _thin_components(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the connected components of mask that are thin and elongated (marks)."""
    m = mask.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    # half thickness of each component = max of the distance transform over its pixels
    dist = cv2.distanceTransform(m, cv2.DIST_L2, 3)
    half = np.zeros(n, np.float32)
    on = m.astype(bool)
    np.maximum.at(half, labels[on], dist[on])
    length = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
    keep = (length >= _MARK_MIN_LEN) & (half <= _MARK_MAX_HALF)
    keep[0] = False
    return keep[labels]


def _check_size(shape: tuple[int, ...], opts: CurateOptions) -> None:
    short = min(shape[:2])
    if short < opts.min_side:
        raise InputRejected("too_small", f"scan region {shape[0]}x{shape[1]} < min_side {opts.min_side}")
    if opts.short_side / short > opts.max_upscale:
        raise InputRejected(
            "too_small",
            f"scan region {shape[0]}x{shape[1]} needs > {opts.max_upscale}x upscaling to {opts.short_side}",
        )


def _resize_short(img: np.ndarray, short: int) -> tuple[np.ndarray, str | None]:
    """Resize (H, W) so that min(H, W) == short exactly, keeping the aspect ratio."""
    h, w = img.shape[:2]
    s = min(h, w)
    if s == short:
        return img, None
    scale = short / s
    if h <= w:
        nh, nw = short, max(1, round(w * scale))
    else:
        nh, nw = max(1, round(h * scale)), short
    if scale < 1:  # INTER_AREA averages: no aliasing of speckle when shrinking
        return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA), f"resize:{short}"
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC), f"resize:{short}:up"
