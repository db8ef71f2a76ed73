"""timm RandAugment strings (``rand-m9-mstd0.5-inc1``) and their closest DALI form, plus
timm-style random erasing, for the DALI fine-tune pipeline (``dali_pipes.finetune``).

How timm's ``rand-m9-mstd0.5-inc1`` maps onto ``nvidia.dali.auto_aug`` (DALI 2.4 source,
``auto_aug/rand_augment.py``; timm ``data/auto_augment.py``):

=====================  =========================================  =========================================
                       timm (MAE recipe)                          DALI here
=====================  =========================================  =========================================
magnitude scale        m of ``mmax`` = 10 (``_LEVEL_DENOM``)       bin m of ``num_magnitude_bins`` = mmax + 1
                                                                  (bin 9 of 0..10 = 0.9 of each op's range)
magnitude noise        ``mstd0.5``: m ~ N(9, 0.5) per op call      none: DALI bins are fixed (m rounded)
per-op probability     each chosen op applied with p = 0.5          the same: a coin flip per layer (``p``)
ops (``inc1``)         15: AutoContrast Equalize Invert Rotate      the same 15: DALI's monotonic suite minus
                       PosterizeInc SolarizeInc SolarizeAdd         ``identity``, plus ``invert`` and
                       ColorInc ContrastInc BrightnessInc           ``solarize_add``
                       SharpnessInc ShearX ShearY TranslateX/YRel
ranges at m = 9        rotate 27°, shear 0.27, enhance 1 ± 0.81,    the same: DALI's bins span each op's range
                       translate 0.405 x size, solarize < 26,       (linspace over num_magnitude_bins); posterize
                       solarize-add 99, posterize 1 bit             gets timm's per-bin bit counts (1 at m9)
fill                   img_mean (gray mean x 255)                  the same value
warp interpolation     the recipe's (bicubic; timm passes it on)    linear (DALI warps: nearest or linear only)
=====================  =========================================  =========================================

Random erasing ``re_mode="pixel"`` (timm ``RandomErasing``): the box gets per-pixel N(0, 1)
noise after normalisation; area in (0.02, 1/3) of the image, log-uniform aspect in (0.3, 1/0.3),
``re_count`` boxes. timm redraws a box that does not fit (10 tries); here it is clamped.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RandAugSpec:
    """A parsed timm ``rand-...`` string (timm ``rand_augment_transform`` conventions)."""

    n: int = 2  # ops per image (``n``)
    m: float = 9.0  # magnitude (``m``), of ``mmax``
    mstd: float = 0.0  # magnitude noise std (``mstd``); inf: uniform in [0, m]
    inc: bool = False  # the increasing-severity op set (``inc1``)
    p: float = 0.5  # probability that each chosen op is applied (``p``)
    mmax: float = 10.0  # magnitude scale (``mmax``, timm's _LEVEL_DENOM)


def parse_timm_randaug(s: str) -> RandAugSpec:
    """``"rand-m9-mstd0.5-inc1"`` -> RandAugSpec(n=2, m=9, mstd=0.5, inc=True, p=0.5, mmax=10).

    Accepts timm's keys m, n, mstd, inc, p, mmax; raises ValueError naming the string for any
    other form (``w`` weighted op choice and AutoAugment/AugMix policies have no DALI form)."""
    parts = s.strip().split("-")
    if not parts or parts[0] != "rand":
        raise ValueError(f"--randaug {s!r}: expected a timm RandAugment string such as 'rand-m9-mstd0.5-inc1'")
    kw: dict = {}
    for part in parts[1:]:
        g = re.fullmatch(r"(mstd|mmax|inc|m|n|p)([0-9.]+|inf)", part)
        if g is None:
            raise ValueError(f"--randaug {s!r}: unsupported part {part!r} (known: m, n, mstd, inc, p, mmax)")
        key, val = g.groups()
        v = float(val)
        kw[key] = bool(int(v)) if key == "inc" else int(v) if key == "n" else v
    spec = RandAugSpec(**kw)
    if spec.n < 0 or not 0 <= spec.m <= spec.mmax or not 0 <= spec.p <= 1:
        raise ValueError(f"--randaug {s!r}: need n >= 0, 0 <= m <= mmax, 0 <= p <= 1")
    return spec


def magnitude_bins(spec: RandAugSpec) -> tuple[int, int]:
    """(num_magnitude_bins, bin) of timm's magnitude: ``mmax + 1`` bins, ``m`` rounded."""
    bins = int(round(spec.mmax)) + 1
    return bins, min(int(round(spec.m)), bins - 1)


def timm_suite(spec: RandAugSpec) -> list:
    """DALI augmentations standing for timm's op set of ``spec`` (see the module table)."""
    from nvidia.dali.auto_aug import augmentations as a
    from nvidia.dali.auto_aug import rand_augment as ra

    translate = 0.45  # timm translate_pct
    if not spec.inc:
        return list(ra.get_rand_augment_non_monotonic_suite(True, None, translate))
    bins, _ = magnitude_bins(spec)
    # timm's PosterizeIncreasing keeps 4 - int(4 b / mmax) bits at bin b (1 bit at m9); DALI's
    # posterize spans 8..4 bits — give it timm's per-bin values (0 bits -> 1, DALI's floor)
    bits = np.array([4 - int(4 * b / spec.mmax) for b in range(bins)], dtype=np.float64)
    suite = [a.posterize.augmentation(mag_range=bits) if op.name == "posterize" else op
             for op in ra.get_rand_augment_suite(True, None, translate) if op.name != "identity"]
    return suite + [a.invert, a.solarize_add]


def rand_augment(img, spec: RandAugSpec, *, size: int, fill_value: int):
    """DALI RandAugment as close to timm's ``spec`` as DALI allows (see the module table).
    img: uint8 HWC DataNode with 3 identical channels; returns the same layout. Call inside a
    ``pipeline_def(enable_conditionals=True)`` pipeline."""
    from nvidia.dali import fn, types
    from nvidia.dali.auto_aug import rand_augment as ra

    bins, m = magnitude_bins(spec)
    suite = timm_suite(spec)
    for _ in range(spec.n):
        if fn.random.coin_flip(probability=spec.p, dtype=types.BOOL):
            img = ra.apply_rand_augment(suite, img, 1, m, num_magnitude_bins=bins, shape=[size, size],
                                        fill_value=fill_value, interp_type=types.INTERP_LINEAR)
    return img


def random_erase(img, *, prob: float, mode: str, count: int):
    """timm ``RandomErasing`` on a normalised float CHW DataNode: ``count`` boxes, each of area
    (0.02, 1/3) and log-uniform aspect (0.3, 1/0.3), filled with per-pixel N(0, 1) noise
    (``mode="pixel"``), per-channel noise (``"rand"``) or 0 (``"const"``), with probability ``prob``."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"random erasing mode must be pixel, rand or const, got {mode!r}")
    if fn.random.coin_flip(probability=prob, dtype=types.BOOL):
        for _ in range(count):
            area = fn.random.uniform(range=[0.02, 1 / 3])
            aspect = dmath.exp(fn.random.uniform(range=[math.log(0.3), math.log(1 / 0.3)]))
            h = dmath.min(dmath.sqrt(area * aspect), 1.0)
            w = dmath.min(dmath.sqrt(area / aspect), 1.0)
            y0 = fn.random.uniform(range=[0.0, 1.0]) * (1.0 - h)
            x0 = fn.random.uniform(range=[0.0, 1.0]) * (1.0 - w)
            box = {"anchor": fn.stack(y0, x0), "shape": fn.stack(h, w), "axis_names": "HW",
                   "normalized_anchor": True, "normalized_shape": True}
            if mode == "const":
                img = fn.erase(img, fill_value=0.0, **box)
            else:
                keep = fn.erase(img * 0.0 + 1.0, fill_value=0.0, **box)  # 1 outside the box, 0 inside
                if mode == "pixel":
                    noise = fn.random.normal(img)
                else:  # one value per channel, as timm's "rand"
                    noise = fn.random.normal(img[:, 0:1, 0:1]) + img * 0.0
                img = img * keep + noise * (1.0 - keep)
    return img
