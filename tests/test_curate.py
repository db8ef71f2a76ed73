"""Tests for sharder.curate on synthetic scanner frames (no data files needed).

A synthetic frame is a speckled tissue region (fan or rectangle) with depth attenuation, a few
elliptical structures and correlated Rayleigh speckle, on black, surrounded by what scanners burn
in: a white text banner, a grey-scale bar, depth ticks with numbers, an ECG trace, labels.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sharder.curate import CurateOptions, colour_mask, curate, deannotate, find_scan_region
from sharder.intensity import to_uint8
from sharder.frames import InputRejected

H, W = 600, 800


# --------------------------------------------------------------------------------------------
# synthetic frames
# --------------------------------------------------------------------------------------------
def speckle(shape: tuple[int, int], rng: np.random.Generator, grain: float = 1.0) -> np.ndarray:
    """(h, w) float32 correlated Rayleigh speckle with mean 1 (envelope of blurred complex noise)."""
    re = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), grain)
    im = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), grain)
    env = np.sqrt(re * re + im * im)
    return env / env.mean()


def tissue(h: int, w: int, rng: np.random.Generator, level: float = 110.0) -> np.ndarray:
    """(h, w) uint8 speckled tissue: echogenicity map with ellipses x depth gain x speckle."""
    echo = np.full((h, w), 0.7, np.float32)
    for _ in range(4):
        c = (int(rng.integers(w // 6, 5 * w // 6)), int(rng.integers(h // 6, 5 * h // 6)))
        ax = (int(rng.integers(w // 20, w // 6)), int(rng.integers(h // 20, h // 6)))
        cv2.ellipse(echo, c, ax, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(0.35, 1.3)), -1)
    echo = cv2.GaussianBlur(echo, (0, 0), 3)
    gain = np.linspace(1.0, 0.65, h, dtype=np.float32)[:, None]  # depth attenuation after TGC
    return np.clip(level * echo * gain * speckle((h, w), rng), 0, 255).astype(np.uint8)


def fan_mask(top: int, apex_r: int = 50, depth: int = 480, half_angle: float = 35.0) -> np.ndarray:
    """(H, W) bool curved-probe sector whose inner arc's highest point is row `top`."""
    m = np.zeros((H, W), np.uint8)
    cy = round(float(top - apex_r * np.cos(np.radians(half_angle))))
    r1 = apex_r + depth
    cv2.ellipse(m, (W // 2, cy), (r1, r1), 0, 90 - half_angle, 90 + half_angle, 1, -1)
    cv2.circle(m, (W // 2, cy), apex_r, 0, -1)
    return m.astype(bool)


def rect_mask(top: int, left: int = 200, bottom: int = 520, right: int = 600) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[top:bottom, left:right] = True
    return m


def scanner_frame(region: np.ndarray, rng: np.random.Generator, bar_x: int = 770) -> np.ndarray:
    """(H, W) uint8 scanner screenshot: tissue inside `region` plus burned-in annotations."""
    img = np.zeros((H, W), np.uint8)
    img[region] = tissue(H, W, rng)[region]
    font = cv2.FONT_HERSHEY_SIMPLEX
    draw_banner(img)
    ramp = np.linspace(255, 0, 256, dtype=np.float32)[:, None]
    img[100:356, bar_x : bar_x + 20] = np.repeat(ramp, 20, axis=1).astype(np.uint8)  # grey-scale bar
    ys, xs = np.nonzero(region)
    tick_x = int(xs.min()) - 14  # depth ticks just left of the tissue, with depth numbers
    for i, y in enumerate(range(int(ys.min()) + 10, int(ys.max()), 40)):
        cv2.line(img, (tick_x, y), (tick_x + 8, y), 220, 1)
        if i % 2 == 0:
            cv2.putText(img, str(i), (tick_x - 22, y + 5), font, 0.45, 220, 1)
    cv2.putText(img, "ABD", (110, 110), font, 0.6, 230, 1)  # label beside the apex
    cv2.polylines(img, [_ecg(int(ys.max()) + 25)], False, 200, 2)
    return img


def draw_banner(img: np.ndarray) -> np.ndarray:
    """Burn the white patient/date/hospital banner into rows ~10-30 of img (in place)."""
    cv2.putText(
        img, "PATIENT ZYXWVUT  01/02/2024  GENERAL HOSPITAL", (8, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 255, 2
    )
    return img


def _ecg(base: int) -> np.ndarray:
    """(N, 1, 2) int32 polyline of an ECG-like trace between x = 40 and 760 at row `base`."""
    x = np.arange(40, 760, 2)
    beat = (x % 180) - 90
    y = base - 18 * np.exp(-((beat / 4.0) ** 2)) + 6 * np.exp(-(((beat - 8) / 4.0) ** 2))
    return np.stack([x, y.round()], axis=1).astype(np.int32)[:, None, :]


def nonzero_rows(img: np.ndarray) -> np.ndarray:
    return np.nonzero(img.any(axis=1))[0]


def coverage(box: tuple[int, int, int, int], region: np.ndarray) -> float:
    y0, x0, y1, x1 = box
    return float(region[y0:y1, x0:x1].sum()) / float(region.sum())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# --------------------------------------------------------------------------------------------
# scan-region crop
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top", [60, 34])  # 34: sector 3-4 px below the banner's last row
def test_fan_crop_drops_banner_bar_ticks_ecg(rng: np.random.Generator, top: int) -> None:
    region = fan_mask(top)
    img = scanner_frame(region, rng)
    banner_last = int(nonzero_rows(draw_banner(np.zeros((H, W), np.uint8)))[-1])
    assert 25 <= banner_last < 32 and top - banner_last >= 3

    out = curate(img, CurateOptions())
    y0, x0, y1, x1 = out.crop
    ys, xs = np.nonzero(region)
    assert y0 > banner_last, "banner rows inside the crop"
    assert x1 <= 770, "grey-scale bar inside the crop"
    assert x0 > int(xs.min()) - 6, "depth ticks inside the crop"
    assert y1 < int(ys.max()) + 10, "ECG trace inside the crop"
    assert coverage(out.crop, region) >= 0.95
    # tight: every side within a few pixels of the true sector box (apex tip may be trimmed)
    assert abs(y1 - (ys.max() + 1)) <= 4 and abs(x0 - xs.min()) <= 4 and abs(x1 - (xs.max() + 1)) <= 4
    assert 0 <= y0 - ys.min() <= 12
    assert out.image.dtype == np.uint8 and out.image.ndim == 2
    assert min(out.image.shape) == 256
    assert out.ops == ["crop:auto", "resize:256"]


@pytest.mark.parametrize("variant", ["jpeg60", "capture_black16", "half_size"])
@pytest.mark.parametrize("kind", ["fan", "linear"])
def test_crop_survives_jpeg_capture_noise_and_scale(
    rng: np.random.Generator, kind: str, variant: str
) -> None:
    region = fan_mask(34) if kind == "fan" else rect_mask(34)
    bar_x = 770 if kind == "fan" else 640
    img, scale = scanner_frame(region, rng, bar_x=bar_x), 1.0
    if variant == "jpeg60":  # ringing around the banner text, blocky black
        img = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_GRAYSCALE)
    elif variant == "capture_black16":  # analogue video grabber: black at 16, noisy
        img = np.clip(img + 16.0 + rng.normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)
    else:
        img, scale = cv2.resize(img, (W // 2, H // 2), interpolation=cv2.INTER_AREA), 0.5
    y0, x0, y1, x1 = (round(v / scale) for v in find_scan_region(img))
    ys = np.nonzero(region.any(axis=1))[0]
    assert y0 >= 31 and x1 <= bar_x and y1 < ys[-1] + 10
    assert coverage((y0, x0, y1, x1), region) >= 0.95


def test_linear_probe_rectangle_close_below_banner(rng: np.random.Generator) -> None:
    region = rect_mask(top=34)
    img = scanner_frame(region, rng, bar_x=640)
    box = find_scan_region(img)
    assert box[0] > int(nonzero_rows(draw_banner(np.zeros((H, W), np.uint8)))[-1])
    assert box[3] <= 640
    assert coverage(box, region) >= 0.95
    assert max(abs(a - b) for a, b in zip(box, (34, 200, 520, 600))) <= 3


def test_crop_is_not_fooled_by_banner_only_frame(rng: np.random.Generator) -> None:
    img = scanner_frame(rect_mask(300, 390, 301, 391), rng)
    with pytest.raises(InputRejected) as e:
        curate(img)
    assert e.value.reason == "blank"


def test_already_cropped_frame_keeps_whole_frame(rng: np.random.Generator) -> None:
    img = tissue(300, 420, rng)
    out = curate(img)
    assert out.crop == (0, 0, 300, 420)
    assert out.ops == ["crop:auto", "resize:256"]
    assert out.image.shape == (256, 358)


@pytest.mark.parametrize("dim", [0.1, 0.3])
def test_already_cropped_frame_with_dim_border_keeps_whole_frame(
    rng: np.random.Generator, dim: float
) -> None:
    img = tissue(300, 420, rng)
    img[:14] = (img[:14] * dim).astype(np.uint8)  # dark near field
    img[:, -10:] = (img[:, -10:] * dim).astype(np.uint8)  # attenuated lateral border
    assert find_scan_region(img) == (0, 0, 300, 420)


def test_dark_fluid_splitting_the_sector_is_merged(rng: np.random.Generator) -> None:
    region = fan_mask(60)
    img = scanner_frame(region, rng)
    img[160:200][region[160:200]] = 2  # full-width anechoic band (e.g. a bladder) across the fan
    box = find_scan_region(img)
    assert coverage(box, region) >= 0.95


def test_crop_none_keeps_frame(rng: np.random.Generator) -> None:
    img = scanner_frame(fan_mask(60), rng)
    out = curate(img, CurateOptions(crop_mode="none", short_side=300))
    assert out.crop == (0, 0, H, W) and out.ops == ["resize:300"]
    assert out.image.shape == (300, 400)


# --------------------------------------------------------------------------------------------
# rejections
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", [0.0, 0.8])
def test_blank_frame_rejected(noise: float) -> None:
    img = np.clip(40 + np.random.default_rng(0).normal(0, noise, (480, 640)), 0, 255).astype(np.uint8)
    for mode in ("auto", "none"):
        with pytest.raises(InputRejected) as e:
            curate(img, CurateOptions(crop_mode=mode))
        assert e.value.reason == "blank"


def test_too_small(rng: np.random.Generator) -> None:
    with pytest.raises(InputRejected) as e:
        curate(tissue(40, 60, rng))
    assert e.value.reason == "too_small"
    # a frame whose scan region is found but too thin
    img = np.zeros((120, 300), np.uint8)
    img[30:90] = tissue(60, 300, rng)
    with pytest.raises(InputRejected) as e:
        curate(img)
    assert e.value.reason == "too_small"
    assert find_scan_region(img) == (30, 0, 90, 300)
    # a big frame with a tiny image and nothing else: no scan region, mostly background
    img = np.zeros((H, W), np.uint8)
    img[200:250, 300:350] = tissue(50, 50, rng)
    with pytest.raises(InputRejected) as e:
        curate(img)
    assert e.value.reason in ("blank", "too_small")
    # too much upscaling needed
    with pytest.raises(InputRejected) as e:
        curate(tissue(100, 120, rng), CurateOptions(short_side=512, min_side=32))
    assert e.value.reason == "too_small"


def test_bad_shape() -> None:
    with pytest.raises(InputRejected) as e:
        curate(np.zeros((4, 300, 300), np.uint8))
    assert e.value.reason == "bad_shape"


def test_options_validated() -> None:
    with pytest.raises(ValueError):
        CurateOptions(colour_policy="grey")
    with pytest.raises(ValueError):
        CurateOptions(crop_mode="fan")


# --------------------------------------------------------------------------------------------
# dtype handling
# --------------------------------------------------------------------------------------------
def test_16bit_is_windowed_robustly(rng: np.random.Generator) -> None:
    t8 = tissue(300, 400, rng)
    img16 = t8.astype(np.uint16) * 200 + 1000
    hot = rng.integers(0, 300 * 400, 40)
    img16.reshape(-1)[hot] = 65535  # hot pixels would squash a min/max window to ~50 gray levels
    out, op = to_uint8(img16)
    assert op == "to_uint8:window" and out.dtype == np.uint8
    p1, p99 = np.percentile(out, (1, 99))
    assert p99 - p1 > 180
    assert np.corrcoef(out.ravel().astype(float), t8.ravel().astype(float))[0, 1] > 0.98

    res = curate(img16)
    assert res.ops[0] == "to_uint8:window" and res.image.dtype == np.uint8 and min(res.image.shape) == 256


def test_to_uint8_cases() -> None:
    small = np.arange(256, dtype=np.uint16).reshape(16, 16)
    out, op = to_uint8(small)
    assert op == "to_uint8:cast" and np.array_equal(out, small)

    sparse = np.zeros((100, 100), np.uint16)
    sparse[5, 5] = sparse[50, 50] = 1000  # 99.98% zeros: percentile window is empty
    out, op = to_uint8(sparse)
    assert op == "to_uint8:minmax" and out[5, 5] == 255 and out.sum() == 510

    f = np.linspace(0, 1, 10000, dtype=np.float32).reshape(100, 100)
    f[0, 0] = np.nan
    out, op = to_uint8(f)
    assert op == "to_uint8:window" and out[0, 0] == 0 and out.max() == 255 and out[50, 50] in range(120, 135)

    out, op = to_uint8(np.full((10, 10), 7.5))
    assert op == "to_uint8:const" and not out.any()
    assert to_uint8(np.ones((4, 4), np.uint8))[1] == "to_uint8:none"


# --------------------------------------------------------------------------------------------
# colour
# --------------------------------------------------------------------------------------------
def doppler_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gray-as-RGB frame, same frame with a colour-Doppler box, (H, W) bool coloured pixels)."""
    region = fan_mask(60)
    gray = scanner_frame(region, rng)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    dop = rgb.copy()
    flow = np.zeros((H, W), np.uint8)
    cv2.ellipse(flow, (380, 300), (45, 18), 20, 0, 360, 1, -1)
    cv2.ellipse(flow, (430, 340), (40, 14), -15, 0, 360, 2, -1)
    dop[flow == 1] = (250, 60, 40)  # flow towards the probe: red (luma 115)
    dop[flow == 2] = (255, 210, 0)  # fast flow: yellow (luma 200); tissue there is ~70
    cv2.rectangle(dop, (320, 260), (480, 380), (200, 200, 200), 1)  # Doppler box outline
    return rgb, dop, flow > 0


def test_colour_mask_ignores_gray_and_tint(rng: np.random.Generator) -> None:
    rgb, dop, flow = doppler_pair(rng)
    assert not colour_mask(rgb).any()
    sepia = np.clip(rgb * np.array([1.0, 0.85, 0.62]), 0, 255).astype(np.uint8)
    assert colour_mask(sepia).mean() < 0.001
    m = colour_mask(dop)
    assert m[flow].mean() > 0.99 and not m[~flow].any()


def test_colour_policies(rng: np.random.Generator) -> None:
    rgb, dop, flow = doppler_pair(rng)
    ref = curate(rgb, CurateOptions(crop_mode="none", short_side=H))
    assert ref.ops == ["gray:luma"]
    assert np.array_equal(ref.image, rgb[..., 0])  # luma of R=G=B is exact

    luma = curate(dop, CurateOptions(crop_mode="none", short_side=H))
    sup = curate(dop, CurateOptions(crop_mode="none", short_side=H, colour_policy="suppress_doppler"))
    assert sup.ops == ["gray:luma", "colour:inpaint"]
    truth = ref.image[flow].astype(float)
    assert abs(luma.image[flow].mean() - truth.mean()) > 40  # luma keeps a bright blob
    assert abs(sup.image[flow].mean() - truth.mean()) < 15  # inpainted from the tissue around
    err_luma = np.abs(luma.image[flow] - truth).mean()
    err_sup = np.abs(sup.image[flow] - truth).mean()
    assert err_sup < 0.6 * err_luma
    far = cv2.dilate(flow.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    assert np.array_equal(sup.image[far], luma.image[far])  # nothing else touched

    with pytest.raises(InputRejected) as e:
        curate(dop, CurateOptions(colour_policy="reject_colour"))
    assert e.value.reason == "colour"
    assert curate(rgb, CurateOptions(colour_policy="reject_colour")).ops[:2] == ["gray:luma", "crop:auto"]
    # the crop is found on the luma image, Doppler or not
    assert curate(dop).crop == curate(rgb).crop


# --------------------------------------------------------------------------------------------
# de-annotation
# --------------------------------------------------------------------------------------------
def caliper(img: np.ndarray, c: tuple[int, int], value, arm: int = 9, thick: int = 2) -> None:
    x, y = c
    cv2.line(img, (x - arm, y), (x + arm, y), value, thick)
    cv2.line(img, (x, y - arm), (x, y + arm), value, thick)


def test_deannotate_removes_caliper_keeps_speckle(rng: np.random.Generator) -> None:
    clean = tissue(300, 400, rng, level=150)  # bright: some speckle saturates at 255
    assert (clean == 255).mean() > 0.002
    marked = clean.copy()
    caliper(marked, (200, 150), 255)
    cv2.putText(marked, "LIVER", (40, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1)
    drawn = marked != clean

    out = curate(marked, CurateOptions(crop_mode="none", deannotate=True, short_side=300))
    assert out.ops == ["deannotate"]
    cal = np.zeros(drawn.shape, np.uint8)
    caliper(cal, (200, 150), 1)
    cal = cal.astype(bool)
    before = marked[cal].mean()
    after = out.image[cal].astype(float).mean()
    assert before > 240 and abs(after - clean[cal].mean()) < 25
    assert out.image[drawn].mean() < clean[drawn].mean() + 25  # the text went too

    # speckle survives: away from the marks nothing changes, and a clean frame is left alone
    far = cv2.dilate(drawn.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    assert (out.image[far] != clean[far]).mean() < 0.002
    untouched, removed = deannotate(clean)
    assert removed.mean() < 0.002 and (untouched != clean).mean() < 0.002


def test_deannotate_colour_caliper(rng: np.random.Generator) -> None:
    clean = tissue(300, 400, rng)
    rgb = np.repeat(clean[..., None], 3, axis=2)
    caliper(rgb, (120, 200), (40, 220, 60))  # green '+': luma ~150, not "near white"
    m = colour_mask(rgb)
    assert m.any()
    out = curate(rgb, CurateOptions(crop_mode="none", deannotate=True, short_side=300))
    assert out.ops == ["gray:luma", "deannotate"]
    assert abs(out.image[m].astype(float).mean() - clean[m].mean()) < 25
    # reject_colour lets a small coloured caliper pass
    curate(rgb, CurateOptions(colour_policy="reject_colour", crop_mode="none"))


def test_curate_full_pipeline_ops(rng: np.random.Generator) -> None:
    img = scanner_frame(fan_mask(60), rng).astype(np.float32) / 255.0
    caliper(img, (400, 300), 1.0)
    out = curate(img, CurateOptions(deannotate=True))
    assert out.ops == ["to_uint8:window", "crop:auto", "deannotate", "resize:256"]
    assert min(out.image.shape) == 256
