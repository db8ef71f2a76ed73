"""Tests for sharder.dedup: exact hash, perceptual hash distances on realistic synthetic frames,
the multi-index near-duplicate index against brute force, and dedup_stream semantics.

Synthetic frames are curated-looking ultrasound frames: a curved-probe fan filling a 256x320
image, depth attenuation, 3-6 elliptical structures (some anechoic), correlated Rayleigh speckle.
Pure random speckle would have a near-random phash; these share the fan outline, which is the hard
case for a perceptual hash (unrelated frames closer than random).
"""

from __future__ import annotations

import itertools
import time

import cv2
import numpy as np
import pytest

from sharder.dedup import (
    DEFAULT_MAX_DIST,
    NearDupIndex,
    dedup_stream,
    frame_hashes,
    hamming,
    phash64,
    phash_hex,
    pixel_hash,
)

H, W, PAD = 256, 320, 8


def speckle(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(h, w) float32 correlated Rayleigh speckle, mean 1."""
    re = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 1.0)
    im = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), 1.0)
    env = np.sqrt(re * re + im * im)
    return env / env.mean()


def fan() -> np.ndarray:
    m = np.zeros((H, W), np.float32)
    cv2.ellipse(m, (W // 2, -30), (H + 30, H + 30), 0, 52, 128, 1, -1)
    cv2.circle(m, (W // 2, -30), 45, 0, -1)
    return m


FAN = fan()
GAIN = np.linspace(1.0, 0.6, H, dtype=np.float32)[:, None]


class Scene:
    """An anatomy (echogenicity + speckle, PAD px larger than the frame on each side) that can be
    rendered at small offsets: the tissue moves under the fixed fan, as in a cine loop."""

    def __init__(self, rng: np.random.Generator):
        echo = np.full((H + 2 * PAD, W + 2 * PAD), 0.7, np.float32)
        for _ in range(int(rng.integers(3, 7))):
            c = (int(rng.integers(0, W)), int(rng.integers(0, H)))
            ax = (int(rng.integers(10, 70)), int(rng.integers(8, 50)))
            level = 0.02 if rng.random() < 0.3 else float(rng.uniform(0.2, 1.5))  # some anechoic
            cv2.ellipse(echo, c, ax, float(rng.uniform(0, 180)), 0, 360, level, -1)
        self.echo = cv2.GaussianBlur(echo, (0, 0), 3)
        self.speckle = speckle(echo.shape, rng)

    def render(self, dy: int = 0, dx: int = 0) -> np.ndarray:
        """(H, W) uint8 frame with the tissue shifted by (dy, dx) px."""
        win = (slice(PAD + dy, PAD + dy + H), slice(PAD + dx, PAD + dx + W))
        img = 110.0 * self.echo[win] * self.speckle[win] * GAIN * FAN
        return np.clip(img, 0, 255).astype(np.uint8)


def reencode(img: np.ndarray, ext: str, quality: int = 90) -> np.ndarray:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, img, params)
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def summary(d: list[int] | np.ndarray) -> str:
    d = np.asarray(d)
    return (
        f"min {d.min()} median {np.median(d):.0f} p95 {np.percentile(d, 95):.0f} max {d.max()} (n={d.size})"
    )


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    rng = np.random.default_rng(2024)
    return [Scene(rng) for _ in range(40)]


# --------------------------------------------------------------------------------------------
# exact hash, phash basics
# --------------------------------------------------------------------------------------------
def test_pixel_hash() -> None:
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert pixel_hash(a) == pixel_hash(a.copy()) == pixel_hash(np.asfortranarray(a))
    assert len(pixel_hash(a)) == 32 and int(pixel_hash(a), 16) >= 0
    b = a.copy()
    b[2, 3] += 1
    assert pixel_hash(b) != pixel_hash(a)
    assert pixel_hash(a.reshape(4, 3)) != pixel_hash(a)  # same bytes, other shape
    assert pixel_hash(a.astype(np.int8)) != pixel_hash(a)  # same bytes, other dtype


def test_phash_properties(scenes: list[Scene]) -> None:
    img = scenes[0].render()
    h = phash64(img)
    assert 0 <= h < 2**63 and h.bit_count() == 31  # 31 of 63 AC bits above the median
    assert phash64(img.copy()) == h
    assert phash_hex(h) == f"{h:016x}" and len(phash_hex(h)) == 16
    dimmer = (img.astype(np.float32) * 0.8).astype(np.uint8)
    assert hamming(phash64(dimmer), h) <= 2  # gain-invariant
    assert phash64(np.repeat(img[..., None], 3, axis=2)) == h  # gray-as-RGB hashes like gray
    assert hamming(phash64(img[::-1]), h) > DEFAULT_MAX_DIST  # upside-down is another picture
    assert frame_hashes(img) == (pixel_hash(img), h)


def test_hamming() -> None:
    assert hamming(0, 0) == 0
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(2**64 - 1, 0) == 64


# --------------------------------------------------------------------------------------------
# distance distributions (the measurement behind DEFAULT_MAX_DIST)
# --------------------------------------------------------------------------------------------
def test_reencoded_frames_are_near(scenes: list[Scene]) -> None:
    d_png, d_jpg = [], []
    for s in scenes:
        img = s.render()
        h = phash64(img)
        d_png.append(hamming(h, phash64(reencode(img, ".png"))))
        d_jpg.append(hamming(h, phash64(reencode(img, ".jpg", 90))))
    print("png vs original:", summary(d_png), "| jpeg90 vs png:", summary(d_jpg))
    assert max(d_png) == 0
    assert max(d_jpg) <= DEFAULT_MAX_DIST


def test_cine_neighbours_are_near(scenes: list[Scene]) -> None:
    """Consecutive frames of a slowly moving cine: the tissue shifted by 1-2 px."""
    d = {1: [], 2: []}
    for s, shift in itertools.product(scenes, (1, 2)):
        h = phash64(s.render())
        for dy, dx in ((shift, 0), (0, shift), (shift, shift), (-shift, 0)):
            d[shift].append(hamming(h, phash64(s.render(dy, dx))))
    print("shift 1 px:", summary(d[1]), "| shift 2 px:", summary(d[2]))
    # the threshold trades these against false matches at scale (see sharder/dedup.py): most, not
    # all, small motions are caught; a missed near-duplicate only costs a slightly redundant frame
    assert np.mean(np.array(d[1]) <= DEFAULT_MAX_DIST) >= 0.97
    assert np.mean(np.array(d[2]) <= DEFAULT_MAX_DIST) >= 0.9
    assert np.median(d[1]) <= 2 and np.median(d[2]) <= 2


def test_unrelated_frames_are_far(scenes: list[Scene]) -> None:
    hashes = [phash64(s.render()) for s in scenes]
    d = [hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    plain = [phash64(s.render(), flatten=False) for s in scenes]
    d_plain = [hamming(a, b) for a, b in itertools.combinations(plain, 2)]
    print("unrelated, same fan:", summary(d), "| without flatten:", summary(d_plain))
    assert min(d) > DEFAULT_MAX_DIST + 1  # a margin above the threshold
    assert np.median(d) >= 24
    # the flat template is what pushes same-probe frames apart
    assert np.median(d) > np.median(d_plain)


def test_flatten_is_plain_phash_without_margins(scenes: list[Scene]) -> None:
    img = np.clip(scenes[1].echo[:H, :W] * scenes[1].speckle[:H, :W] * 110 + 20, 0, 255).astype(np.uint8)
    assert phash64(img) == phash64(img, flatten=False)


# --------------------------------------------------------------------------------------------
# NearDupIndex
# --------------------------------------------------------------------------------------------
def planted_hashes(n: int, rng: np.random.Generator, max_flip: int, skew: bool = False) -> list[int]:
    """n hashes: half random, half copies of an earlier one with 0..max_flip bits flipped.

    skew: the top 24 bits constant, as the lowest frequencies of one probe's frames tend to be.
    """
    out: list[int] = []
    for i in range(n):
        if i < 50 or rng.random() < 0.5:
            h = int(rng.integers(0, 2**63)) | (int(rng.integers(0, 2)) << 63)
            if skew:
                h = (h & ((1 << 40) - 1)) | (0xA5C3F0 << 40)
        else:
            h = out[int(rng.integers(0, len(out)))]
            for b in rng.choice(64 if not skew else 40, int(rng.integers(0, max_flip + 1)), replace=False):
                h ^= 1 << int(b)
        out.append(h)
    return out


def brute_force(hashes: list[int], max_dist: int) -> list[int | None]:
    """Index of the closest earlier hash within max_dist (earliest on ties), per hash."""
    arr = np.array(hashes, dtype=np.uint64)
    res: list[int | None] = []
    for i, h in enumerate(hashes):
        if i == 0:
            res.append(None)
            continue
        d = np.bitwise_count(arr[:i] ^ np.uint64(h))
        j = int(np.argmin(d))
        res.append(j if d[j] <= max_dist else None)
    return res


@pytest.mark.parametrize(("max_dist", "skew"), [(DEFAULT_MAX_DIST, False), (4, True), (0, False)])
def test_index_agrees_with_brute_force(max_dist: int, skew: bool) -> None:
    rng = np.random.default_rng(max_dist)
    n = 20_000 if max_dist == DEFAULT_MAX_DIST else 6_000
    hashes = planted_hashes(n, rng, max_flip=max_dist + 2, skew=skew)

    t0 = time.perf_counter()
    index = NearDupIndex(max_dist)
    got: list[str | None] = []
    for i, h in enumerate(hashes):
        got.append(index.query(h))
        index.add(h, str(i))
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    want = brute_force(hashes, max_dist)
    t_brute = time.perf_counter() - t0

    assert got == [None if w is None else str(w) for w in want]
    assert len(index) == n
    found = sum(w is not None for w in want)
    assert found > n // 8  # the planted neighbours are really there
    assert sum(w is None for w in want) > n // 4  # ... and so are misses
    print(
        f"n={n} max_dist={max_dist} skew={skew}: index {t_index:.2f}s, brute force (numpy) {t_brute:.2f}s, "
        f"{found} near pairs"
    )


def test_index_returns_closest_then_earliest() -> None:
    idx = NearDupIndex(6)
    assert idx.query(0) is None and len(idx) == 0
    idx.add(0b111111, "six")  # distance 6 from 0
    idx.add(0b11, "two-a")  # distance 2
    idx.add(0b1100, "two-b")  # distance 2, later
    idx.add(0b1111111, "seven")  # distance 7: out of reach
    assert idx.query(0) == "two-a" and idx.nearest(0) == ("two-a", 2)
    assert idx.nearest(1 << 40 | 1 << 41 | 1 << 42 | 1 << 43 | 1 << 44 | 1 << 45 | 1 << 46) is None
    assert idx.query(0b1111111) == "seven"
    assert idx.query(1 << 63) == "two-a"  # distance 3
    assert idx.query((1 << 63) | (1 << 62) | (1 << 61) | (1 << 60) | (1 << 59)) is None  # >= 7 from all


def test_index_rejects_bad_max_dist() -> None:
    with pytest.raises(ValueError):
        NearDupIndex(-1)
    with pytest.raises(ValueError):
        NearDupIndex(32)


# --------------------------------------------------------------------------------------------
# dedup_stream
# --------------------------------------------------------------------------------------------
def test_dedup_stream_first_seen_wins(scenes: list[Scene]) -> None:
    a = scenes[0].render()
    a_jpg = reencode(a, ".jpg", 90)
    b = scenes[1].render()
    frames = {"a": a, "a_copy": a.copy(), "a_jpg": a_jpg, "b": b, "a_jpg_copy": a_jpg.copy()}
    records = [(k, *frame_hashes(v)) for k, v in frames.items()]

    out = list(dedup_stream(records))
    assert [k for k, _, _ in out] == list(frames)  # one result per record, input order
    assert out == [
        ("a", None, None),
        ("a_copy", "a", "exact"),
        ("a_jpg", "a", "near"),
        ("b", None, None),
        # pixel-identical to a dropped frame: still points at the KEPT frame, via the index
        ("a_jpg_copy", "a", "near"),
    ]
    # the caller decides who wins by the order it feeds
    rev = {k: (dup, kind) for k, dup, kind in dedup_stream(records[::-1])}
    assert rev["a_jpg_copy"] == (None, None)
    assert rev["a_jpg"] == ("a_jpg_copy", "exact")
    assert rev["a"] == ("a_jpg_copy", "near")
    # exact only
    assert [kind for _, _, kind in dedup_stream(records, max_dist=None)] == [
        None,
        "exact",
        None,
        None,
        "exact",
    ]


def test_dedup_stream_does_not_chain(scenes: list[Scene]) -> None:
    """A cine drifting away: frames are compared with KEPT frames, so once the view has moved
    more than the threshold from the last kept frame a new one is kept (no collapse onto frame 0)."""
    base = 0
    hashes = [base]
    for i in range(1, 12):  # each step flips 2 new bits: 2 from the previous, 2*i from frame 0
        hashes.append(hashes[-1] ^ (0b11 << (2 * i)))
    records = [(f"f{i}", f"p{i}", h) for i, h in enumerate(hashes)]
    out = list(dedup_stream(records, max_dist=DEFAULT_MAX_DIST))
    kept = [k for k, dup, _ in out if dup is None]
    assert kept[0] == "f0" and 2 <= len(kept) < len(hashes)
    for k, dup, _ in out:
        if dup is not None:
            assert dup in kept
            assert hamming(hashes[int(k[1:])], hashes[int(dup[1:])]) <= DEFAULT_MAX_DIST
