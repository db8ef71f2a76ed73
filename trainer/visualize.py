"""Reconstruction viewer (facebookresearch/mae's demo as a command):

    python -m trainer.visualize --init WEIGHTS --images a.png b.dcm c.nii.gz ... --out grid.png \\
        [--mask-ratio 0.75] [--seed 0] [--frame 0] [--crop auto|none]

WEIGHTS: anything ``trainer.weights`` reads that has a decoder (the USF-MAE release, a
facebookresearch/mae ``mae_visualize_*.pth`` or training checkpoint, a run of this project).
Inputs: anything the sharder reads (PNG/JPEG/BMP/TIFF, DICOM incl. multi-frame and compressed,
NIfTI/NRRD/MHA volumes, video), read and curated exactly as ``usf-shard build`` does (scan region
crop, gray) and then resized (short side) and centre-cropped to the model's input size.
One row per image: original | masked | reconstruction | reconstruction + visible; the masked-patch
MSE of each image (in the weights' normalisation) is printed.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from runconfig import add_arguments, config, parse
from sharder.curate import CROP_MODES, CurateOptions, curate
from sharder.frames import InputRejected, ReaderOptions
from sharder.readers import detect_format, iter_frames

from .recon import save_recon_grid
from .weights import Norm, WeightsError, build_mae

log = logging.getLogger("trainer.visualize")


@config
class ViewConfig:
    init: str  # weights with a decoder (file, checkpoint or run dir)
    images: list[str]  # inputs: any format usf-shard reads
    out: str  # PNG to write
    mask_ratio: float = 0.75
    seed: int = 0  # mask seed: same seed, same masks
    frame: int = 0  # which frame of a cine / slice of a volume / frame of a video
    crop: Literal[CROP_MODES] = "auto"  # scan-region crop as the sharder does ("none": the whole frame)


def read_image(path: str | Path, size: int, frame: int = 0, crop: str = "auto") -> np.ndarray:
    """One frame of any input the sharder reads -> [size, size] uint8 gray: the sharder's reader
    and curation (scan region, gray), short side resized to ``size``, centre crop."""
    path = Path(path)
    try:
        fmt = detect_format(path)
        frames = iter_frames(path, fmt, ReaderOptions(max_frames=frame + 1))
        picked = None
        for i, f in enumerate(frames):
            if i == frame:
                picked = f
        if picked is None:
            raise InputRejected("no_frames", f"the input has fewer than {frame + 1} frame(s)")
        img = curate(picked.pixels, CurateOptions(crop_mode=crop, short_side=size, min_side=min(64, size))).image
    except InputRejected as e:
        raise ValueError(f"{path}: cannot be shown ({e.reason}: {e.detail})") from e
    h, w = img.shape
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[y:y + size, x:x + size])


def to_batch(imgs: list[np.ndarray], norm: Norm) -> torch.Tensor:
    """[H, W] uint8 gray images -> [B, C, H, W] float32, replicated to C channels, normalised."""
    x = torch.from_numpy(np.stack(imgs)).float().div_(255.0)[:, None].expand(-1, norm.chans, -1, -1)
    m, s = torch.tensor(norm.mean).view(1, -1, 1, 1), torch.tensor(norm.std).view(1, -1, 1, 1)
    return (x - m) / s


def visualize(cfg: ViewConfig) -> tuple[Path, list[float]]:
    """-> (the PNG written, masked-patch MSE per image)."""
    if not 0.0 <= cfg.mask_ratio < 1.0:
        raise ValueError(f"--mask-ratio must be in [0, 1), got {cfg.mask_ratio}")
    model, norm = build_mae(cfg.init)
    size = model.cfg.img_size
    batch = to_batch([read_image(p, size, cfg.frame, cfg.crop) for p in cfg.images], norm)
    out = Path(cfg.out)
    err = save_recon_grid(model, batch, out, norm.mean, norm.std, cfg.seed, cfg.mask_ratio)
    return out, [float(e) for e in err]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, ViewConfig)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = parse(p, ViewConfig, argv)[0]
        out, err = visualize(cfg)
    except (WeightsError, ValueError, OSError) as e:  # ValueError: also runconfig.ConfigError
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path, e in zip(cfg.images, err):
        print(f"{path}: masked-patch MSE {e:.4f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
