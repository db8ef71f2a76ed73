"""The MAE fine-tune transforms, exactly: timm ``create_transform`` for training and MAE's own
eval / linear-probe transforms (facebookresearch/mae ``util/datasets.py`` ``build_transform``,
``main_linprobe.py``), applied to the gray uint8 images of ``dali_pipes.finetune_torch``.

    train  timm.data.create_transform(img_size, is_training=True, scale=(crop_min, 1), hflip,
           color_jitter=None, auto_augment=<timm string, e.g. rand-m9-mstd0.5-inc1>,
           interpolation=<bicubic>, re_prob, re_mode=<pixel>, re_count=<1>, mean, std)
    probe  RandomResizedCrop(img_size, bicubic) + hflip + ToTensor + Normalize   (MAE linprobe)
    eval   Resize(int(img_size / crop_pct), bicubic) + CenterCrop(img_size) + ToTensor + Normalize

**Gray images.** timm's RandAugment works on PIL images and its fills are RGB tuples (an "L"
image given a 3-tuple fill fails in PIL), so the gray image goes in as an R = G = B PIL image.
Every op of the suite treats the three identical channels identically (Color/saturation is the
identity on them, Equalize/AutoContrast/Posterize/Solarize act per channel alike, the fill is
the gray ``img_mean``), so the output still has R = G = B; for a 1-channel model channel 0 is
kept (normalised with the gray mean/std). Random erasing in ``pixel`` mode then draws
per-pixel N(0, 1) noise — channel 0 of 3-channel noise has exactly the 1-channel distribution.
The cost is 3x the PIL work of a gray image on the train path (eval and probe stay gray).

**Determinism.** timm draws from Python's ``random`` (crop, op magnitudes, erasing boxes),
NumPy's global RNG (RandAugment's op choice) and torch (erasing noise); ``dali_pipes.finetune_torch``
seeds only torch per sample. :class:`TimmTransform` therefore seeds ``random`` and ``np.random``
from the (seeded) torch generator for each call and restores both afterwards, so a sample's
augmentation stays a function of its sample seed.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "random")
RE_MODES = ("pixel", "rand", "const")


def _pil_interp(name: str) -> T.InterpolationMode:
    return {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
            "nearest": T.InterpolationMode.NEAREST, "lanczos": T.InterpolationMode.LANCZOS}[name]


def mae_eval_size(img_size: int, crop_pct: float) -> int:
    """Resize target of MAE's eval transform: ``int(img_size / crop_pct)`` (MAE: crop_pct
    224/256 for img_size <= 224, else 1.0 — the caller passes the crop_pct it wants)."""
    return int(img_size / crop_pct)


class TimmTransform:
    """uint8 (1, H, W) tensor -> normalised float (in_chans, img_size, img_size) tensor by the
    MAE recipe (see the module doc). ``mode``: train | probe | eval."""

    def __init__(self, *, mode: str, img_size: int, in_chans: int, mean: Sequence[float], std: Sequence[float],
                 crop_min: float = 0.08, hflip: float = 0.5, auto_augment: str | None = "rand-m9-mstd0.5-inc1",
                 interpolation: str = "bicubic", re_prob: float = 0.25, re_mode: str = "pixel", re_count: int = 1,
                 crop_pct: float = 0.875):
        from timm.data import create_transform

        if mode not in ("train", "probe", "eval"):
            raise ValueError(f"unknown transform mode {mode!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if re_mode not in RE_MODES:
            raise ValueError(f"random erasing mode must be one of {RE_MODES}, got {re_mode!r}")
        if in_chans not in (1, 3) or len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(f"{len(mean)} mean / {len(std)} std values for in_chans={in_chans} (1 or 3)")
        self.mode, self.in_chans = mode, in_chans
        # 3 channels through timm (see the module doc); a gray model's statistics repeated
        mean3 = tuple(float(m) for m in mean) * (3 // in_chans)
        std3 = tuple(float(s) for s in std) * (3 // in_chans)
        if mode == "train":
            self.rgb = True
            self.t = create_transform(img_size, is_training=True, scale=(float(crop_min), 1.0), hflip=hflip,
                                      color_jitter=None, auto_augment=auto_augment or None,
                                      interpolation=interpolation, re_prob=re_prob, re_mode=re_mode,
                                      re_count=re_count, mean=mean3, std=std3)
        else:
            self.rgb = False
            interp = _pil_interp("bicubic" if interpolation == "random" else interpolation)
            geo = ([T.RandomResizedCrop(img_size, scale=(float(crop_min), 1.0), interpolation=interp),
                    T.RandomHorizontalFlip(hflip)] if mode == "probe" else
                   [T.Resize(mae_eval_size(img_size, crop_pct), interpolation=interp), T.CenterCrop(img_size)])
            self.t = T.Compose([*geo, T.ToTensor(), T.Normalize(mean3[:1], std3[:1])])
            self.gray_mean, self.gray_std = mean3, std3

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: uint8 (1, H, W). Returns float (in_chans, img_size, img_size)."""
        gray = Image.fromarray(np.ascontiguousarray(x[0].numpy()), mode="L")
        state, np_state = random.getstate(), np.random.get_state()
        try:
            seed = int(torch.randint(0, 2**62, (1,)).item())
            random.seed(seed)
            np.random.seed(seed % 2**32)
            if self.rgb:
                out = self.t(gray.convert("RGB"))  # (3, S, S), R = G = B until erasing
                return out[:1] if self.in_chans == 1 else out
            out = self.t(gray)  # (1, S, S) normalised with channel 0's statistics
        finally:
            random.setstate(state)
            np.random.set_state(np_state)
        if self.in_chans == 3:
            m, s = torch.tensor(self.gray_mean).view(3, 1, 1), torch.tensor(self.gray_std).view(3, 1, 1)
            out = (out * s[:1] + m[:1] - m) / s  # the same pixels normalised per channel
        return out

    def __repr__(self) -> str:
        return f"TimmTransform(mode={self.mode}, in_chans={self.in_chans}, {self.t!r})"

