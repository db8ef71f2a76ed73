"""Options of the data pipelines, as dataclasses (no loose kwargs)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PretrainOptions:
    """MAE pretraining augmentation (facebookresearch/mae: RandomResizedCrop(scale=(0.2, 1)),
    horizontal flip, normalise) and reader settings."""

    img_size: int = 224
    in_chans: int = 1  # 1: grayscale; 3: the gray channel repeated (ImageNet-initialised models)
    batch_size: int = 64
    num_threads: int = 2  # DALI CPU threads / DataLoader workers in the baseline
    seed: int = 0
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    shuffle_buffer: int = 1024  # DALI reader initial_fill: samples mixed in the reader's buffer
    device: str = "auto"  # "cpu" | "gpu" | "auto" (gpu when CUDA is available)
    device_id: int | None = None  # GPU ordinal (local rank); None on CPU
    prefetch: int = 2
    skip_corrupt: bool = False  # count and skip samples with a missing member instead of failing
    hw_decoder_load: float = 0.65  # share of JPEGs sent to the A100/H100 hardware decoder
    split: str = "train"
