"""The scanner's own scan regions: DICOM ``SequenceOfUltrasoundRegions`` (PS3.3 C.8.5.5).

A scanner that writes this sequence says, per region, where on the screen it drew what: a 2D
tissue image, a colour-flow box, an M-mode strip, a spectral Doppler strip, an ECG or other
waveform, a gray/colour bar. That is better evidence than any pixel heuristic, so the sharder
crops from it first (``crop:region``) and falls back to pixel detection only when a file has no
usable region.

Policy per region type (``REGION_POLICY``): 2D tissue (RegionSpatialFormat 1, RegionDataType 1)
and 2D colour flow (1, 2: a B-mode image with a colour box in it) are images and are kept;
M-mode (2), spectral (3), waveform (4) and graphics (5) regions, and gray/colour bars, ECG or
other physiological traces are not anatomy images and are dropped. Several kept regions that
do not overlap are a dual (or quad) view: each becomes its own sample. A kept region nested in
another kept one (a colour box drawn inside its B-mode image) is dropped in favour of the outer.

Checked against the pixels (:func:`select_image_regions`): a region must lie inside the frame.
Files whose pixels were resized or cropped after the scanner wrote the header (test files
resampled to 320x240 that still carry 640x480 coordinates) carry regions that do not fit: then
the whole set is ignored (``crop:region_mismatch``) and pixel detection is used. The curation
step then still refines each region against its pixels (scanner regions of some vendors span the
text columns beside the image).

Only integers leave this module (coordinates and type codes): no tag value is text here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# RegionSpatialFormat codes (C.8.5.5.1.1)
SPATIAL_NONE, SPATIAL_2D, SPATIAL_MMODE, SPATIAL_SPECTRAL, SPATIAL_WAVEFORM, SPATIAL_GRAPHICS = range(6)
# RegionDataType codes (C.8.5.5.1.2) that are images of anatomy
DATA_TISSUE, DATA_COLOUR_FLOW = 1, 2

#: (spatial format, data type) -> "keep" | "drop"; anything not listed is dropped.
REGION_POLICY: dict[tuple[int, int], str] = {
    (SPATIAL_2D, DATA_TISSUE): "keep",
    (SPATIAL_2D, DATA_COLOUR_FLOW): "keep",
}


@dataclass(frozen=True)
class UsRegion:
    """One ultrasound region in pixel coordinates, end-exclusive: ``pixels[y0:y1, x0:x1]``."""

    y0: int
    x0: int
    y1: int
    x1: int
    spatial: int  # RegionSpatialFormat
    data_type: int  # RegionDataType

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.y0, self.x0, self.y1, self.x1

    @property
    def area(self) -> int:
        return max(0, self.y1 - self.y0) * max(0, self.x1 - self.x0)

    def as_list(self) -> list[int]:
        return [self.y0, self.x0, self.y1, self.x1, self.spatial, self.data_type]


def read_us_regions(ds: Any) -> list[UsRegion]:
    """Regions of a pydicom Dataset; items missing a coordinate are skipped. RegionLocationMax*
    are inclusive in DICOM and become end-exclusive here. Never raises on malformed items."""
    seq = ds.get("SequenceOfUltrasoundRegions", None)
    out: list[UsRegion] = []
    for item in seq or ():
        try:
            vals = [item.get(k, None) for k in ("RegionLocationMinY0", "RegionLocationMinX0",
                                                 "RegionLocationMaxY1", "RegionLocationMaxX1")]
            if any(v is None for v in vals):
                continue
            y0, x0, y1, x1 = (int(v) for v in vals)
            spatial = int(item.get("RegionSpatialFormat", 0) or 0)
            dtype = int(item.get("RegionDataType", 0) or 0)
        except (TypeError, ValueError, OverflowError, AttributeError):
            continue
        if y1 < y0 or x1 < x0:
            continue
        out.append(UsRegion(y0, x0, y1 + 1, x1 + 1, spatial, dtype))
    return out


def regions_of(frame: Any) -> list[UsRegion]:
    """The regions a reader stored in ``Frame.regions`` (lists of 6 ints)."""
    return [UsRegion(*map(int, r)) for r in getattr(frame, "regions", None) or () if len(r) == 6]


def _inside(a: UsRegion, b: UsRegion, slack: int = 2) -> bool:
    return (a.y0 >= b.y0 - slack and a.x0 >= b.x0 - slack and a.y1 <= b.y1 + slack
            and a.x1 <= b.x1 + slack)


def select_image_regions(regions: list[UsRegion], shape: tuple[int, int],
                         min_side: int = 32) -> tuple[list[tuple[int, int, int, int]], str]:
    """Boxes (y0, x0, y1, x1) of the image regions to crop, and a status.

    shape: (H, W) of the decoded frame. Status: ``"none"`` (no regions, or none is an image of
    anatomy), ``"mismatch"`` (some region does not fit in the frame: the pixels were resampled
    or cropped after the header was written; nothing is trusted), ``"ok"``. Boxes are in
    reading order (top to bottom, left to right), nested kept regions removed.
    """
    if not regions:
        return [], "none"
    h, w = shape
    # a region may end one pixel past the frame (inclusive/exclusive confusion of some writers)
    if any(r.y1 > h + 1 or r.x1 > w + 1 for r in regions):
        return [], "mismatch"
    return _image_boxes(regions, shape, min_side)


def refit_regions(regions: list[UsRegion], shape: tuple[int, int]) -> tuple[list[UsRegion], str]:
    """Candidate regions for a frame they do not fit, and how they were refitted.

    - ``"clipped"``: they overflow one axis only (the frame was cut, e.g. 600 -> 350 rows, at
      the same scale): each region is clipped to the frame.
    - ``"rescaled"``: they overflow both axes and divided by the smallest integer k in 2..4 they
      all fit (the frame was resampled 1/k, e.g. 640x480 -> 320x240).
    - ``"mismatch"``: neither. The caller must check a refit against the pixels before use.
    """
    h, w = shape
    over_y = any(r.y1 > h + 1 for r in regions)
    over_x = any(r.x1 > w + 1 for r in regions)
    if over_y != over_x:
        clipped = [UsRegion(min(r.y0, h), min(r.x0, w), min(r.y1, h), min(r.x1, w), r.spatial,
                            r.data_type) for r in regions]
        return [r for r in clipped if r.area > 0], "clipped"
    for k in (2, 3, 4):
        scaled = [UsRegion(r.y0 // k, r.x0 // k, -(-r.y1 // k), -(-r.x1 // k), r.spatial, r.data_type)
                  for r in regions]
        if all(r.y1 <= h + 1 and r.x1 <= w + 1 for r in scaled):
            return scaled, "rescaled"
    return [], "mismatch"


def _image_boxes(regions: list[UsRegion], shape: tuple[int, int],
                 min_side: int) -> tuple[list[tuple[int, int, int, int]], str]:
    h, w = shape
    kept = [r for r in regions if REGION_POLICY.get((r.spatial, r.data_type)) == "keep"
            and min(r.y1 - r.y0, r.x1 - r.x0) >= min_side]
    outer = [r for r in kept if not any(o is not r and o.area > r.area and _inside(r, o) for o in kept)]
    boxes = sorted({(r.y0, r.x0, min(r.y1, h), min(r.x1, w)) for r in outer})
    return boxes, ("ok" if boxes else "none")
