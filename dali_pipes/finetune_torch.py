"""The PyTorch fine-tune loader: labelled images -> batches of the design's batch contract (§2)
``{"image": FloatTensor[B, C, H, W], "label": LongTensor[B], "index": LongTensor[B]}``
(:class:`dali_pipes.loader.FinetuneBatch`).

Images are read as 8-bit grayscale (ultrasound is gray; colour overlays were never part of the
signal) by the conversion the sharder and the DALI loader share (``sharder.intensity``: 16-bit
through the sharder's percentile window), transformed as uint8 (H, W) tensors, scaled to 0..1,
expanded to C = 1 or 3 channels and normalised with the encoder's pixel statistics.

``TransformConfig.aug = "timm"`` replaces the transforms below by the MAE recipe exactly
(``dali_pipes.timm_aug``: timm ``create_transform`` with a timm RandAugment string, bicubic, pixel-noise
erasing; MAE's bicubic eval). The default ``"torchvision"`` is the pipeline described next.

Train transform (MAE/BEiT fine-tune style, via torchvision v2): RandomResizedCrop(img_size,
scale=(crop_min, 1)) — ``crop_min`` defaults to 0.2 rather than ImageNet's 0.08 because a small
crop of a lesion image easily misses the lesion —, horizontal flip, a small rotation (probe
orientation varies a few degrees), RandAugment, and random erasing after normalisation.
Linear probing uses only crop + flip (as MAE's linprobe). Eval: resize the short side to
``img_size / crop_pct`` then centre-crop ``img_size``.

:func:`build_finetune_loader` is the one place a loader is chosen: ``loader="torch"`` builds the
:class:`TorchFinetuneLoader` below, ``loader="dali"`` calls ``dali_pipes.finetune.build_finetune_loader``
with the same keyword arguments.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from sharder.intensity import gray_u8, read_gray_u8

from .finetune_plan import check_rank, eval_plan, global_order, train_plan, train_steps
from .loader import EpochCounter, check_state, expand_channels
from .records import Record

# Defaults when neither an encoder config nor the user gives pixel statistics: ImageNet's for
# RGB (what timm checkpoints expect), their channel average for a single gray channel.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.449,)
GRAY_STD = (0.226,)


@dataclass
class TransformConfig:
    img_size: int = 224
    in_chans: int = 1
    mean: tuple[float, ...] = GRAY_MEAN
    std: tuple[float, ...] = GRAY_STD
    crop_min: float = 0.2  # RandomResizedCrop lower scale bound
    rotate_deg: float = 10.0
    randaug_ops: int = 2  # RandAugment num_ops; 0 disables
    randaug_magnitude: int = 9
    reprob: float = 0.25  # random erasing probability (MAE fine-tune default)
    crop_pct: float = 0.875  # eval: resize to img_size / crop_pct, centre-crop img_size
    # "torchvision": the pipeline below; "timm": the MAE recipe exactly (dali_pipes.timm_aug: timm
    # create_transform + MAE's bicubic eval/probe transforms), which the next fields configure
    aug: str = "torchvision"
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm RandAugment string (aug="timm")
    interpolation: str = "bicubic"  # aug="timm": random-resized-crop and eval resize
    re_mode: str = "pixel"  # aug="timm": random erasing fill, per-pixel N(0, 1) noise
    re_count: int = 1  # aug="timm": erased boxes per image
    hflip: float = 0.5  # aug="timm": horizontal flip probability


def channel_stats(values: Sequence[float] | float | None, in_chans: int, default: Sequence[float]) -> tuple[float, ...]:
    """Per-channel mean or std for ``in_chans`` channels from one value (gray), ``in_chans``
    values, or three RGB values averaged down to one (gray input)."""
    if values is None:
        values = default
    vals = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(vals) == in_chans:
        return tuple(vals)
    if len(vals) == 1:
        return tuple(vals * in_chans)
    if in_chans == 1:
        return (float(np.mean(vals)),)
    raise ValueError(f"{len(vals)} normalisation values for {in_chans} channels")


# ---------------------------------------------------------------------------- transforms

def build_transform(cfg: TransformConfig, mode: str) -> v2.Compose:
    """uint8 (1, H, W) tensor -> normalised float (C, img_size, img_size) tensor.

    mode: ``"train"`` (full augmentation), ``"probe"`` (crop + flip only) or ``"eval"``."""
    if cfg.aug == "timm":
        from dali_pipes.timm_aug import TimmTransform

        return TimmTransform(mode=mode, img_size=cfg.img_size, in_chans=cfg.in_chans, mean=cfg.mean, std=cfg.std,
                             crop_min=cfg.crop_min, hflip=cfg.hflip, auto_augment=cfg.auto_augment,
                             interpolation=cfg.interpolation, re_prob=cfg.reprob, re_mode=cfg.re_mode,
                             re_count=cfg.re_count, crop_pct=cfg.crop_pct)
    if cfg.aug != "torchvision":
        raise ValueError(f"unknown augmentation {cfg.aug!r} (torchvision or timm)")
    size = cfg.img_size
    ops: list = []
    if mode in ("train", "probe"):
        ops += [v2.RandomResizedCrop(size, scale=(cfg.crop_min, 1.0), antialias=True), v2.RandomHorizontalFlip()]
        if mode == "train":
            if cfg.rotate_deg > 0:
                ops.append(v2.RandomRotation(cfg.rotate_deg))
            if cfg.randaug_ops > 0:
                ops.append(v2.RandAugment(num_ops=cfg.randaug_ops, magnitude=cfg.randaug_magnitude))
    elif mode == "eval":
        ops += [v2.Resize(math.floor(size / cfg.crop_pct), antialias=True), v2.CenterCrop(size)]
    else:
        raise ValueError(f"unknown transform mode {mode!r}")
    ops += [v2.ToDtype(torch.float32, scale=True), _ExpandChannels(cfg.in_chans),
            v2.Normalize(mean=list(cfg.mean), std=list(cfg.std))]
    if mode == "train" and cfg.reprob > 0:
        ops.append(v2.RandomErasing(p=cfg.reprob, value=0))
    return v2.Compose(ops)


class _ExpandChannels(torch.nn.Module):
    """(1, H, W) -> (C, H, W) by repeating the gray channel (a view-free copy, C = 1 or 3)."""

    def __init__(self, in_chans: int):
        super().__init__()
        self.in_chans = in_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.in_chans == 1 else expand_channels(x, self.in_chans).contiguous()


# ---------------------------------------------------------------------------- dataset / sampler

class FinetuneDataset(Dataset):
    """Records -> ``{"image": FloatTensor[C, H, W], "label": int64 tensor, "index": int64 tensor}``.

    Indexed by a record index, or by ``(record index, sample seed)``: the random transform then
    draws from a torch generator seeded with that seed (the process RNG is left as it was), so a
    sample's augmentation is a function of its seed alone — the same with any worker count, rank
    count, or after a resume."""

    def __init__(self, records: Sequence[Record], transform: v2.Compose):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        r = self.records[i]
        # in-memory arrays are in OpenCV's BGR(A) order, like decoded files
        gray = gray_u8(r.image, order="bgr", what=r.name)[0] if r.image is not None else read_gray_u8(r.path)
        x = torch.from_numpy(gray).unsqueeze(0)  # (1, H, W) uint8
        if seed is None:
            img = self.transform(x)
        else:  # torchvision v2 draws from the global torch RNG only: seed a forked copy of it
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                img = self.transform(x)
        return {"image": img, "label": torch.tensor(r.label, dtype=torch.int64),
                "index": torch.tensor(i, dtype=torch.int64)}


def class_balanced_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Per-class weights n / (K_present * count_c) (1 on average over samples); 0 for absent classes."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


class EpochSampler(Sampler[tuple[int, int]]):
    """This rank's ``(record index, sample seed)`` pairs of one epoch, from the plan both loaders
    share (``dali_pipes.finetune_plan``): train — the rank's slice of every global batch of a
    permutation, or of class-balanced draws with replacement (``weights``), fixed by (seed,
    epoch); eval — the rank's contiguous chunk of the records, in order. The sample seed is a
    function of (seed, epoch, position in the global order). ``start`` skips already-consumed
    samples so a resumed epoch continues where it stopped."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, weights: np.ndarray | None = None, *,
                 batch_size: int = 1, rank: int = 0, world_size: int = 1, drop_last: bool = False):
        check_rank(rank, world_size)
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.train = shuffle or weights is not None
        self.batch_size, self.rank, self.world_size, self.drop_last = batch_size, rank, world_size, drop_last
        self.epoch, self.start = 0, 0

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(record indices, sample seeds) of this rank in the current epoch."""
        if not self.train:
            idx = eval_plan(self.n, self.rank, self.world_size)
            return idx, self.seed * 1_000_003 + idx
        order = global_order(self.n, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle, weights=self.weights)
        idx, pos = train_plan(order, self.batch_size, self.rank, self.world_size, self.drop_last)
        return idx, (self.seed * 1_000_003 + self.epoch) * 1_000_033 + pos

    def __iter__(self):
        idx, seeds = self.plan()
        return iter([(int(i), int(s) % 2**63) for i, s in zip(idx[self.start:], seeds[self.start:])])

    def __len__(self) -> int:
        return len(self.plan()[0]) - self.start


class TorchFinetuneLoader(EpochCounter):
    """A :class:`~dali_pipes.loader.Loader` yielding :class:`~dali_pipes.loader.FinetuneBatch`,
    plus ``set_epoch``. An eval loader keeps its epoch (its order never changes).

    The samples and their augmentation are a function of (seed, epoch, position): after
    ``load_state_dict`` the remaining batches of the interrupted epoch come next, identical to
    the uninterrupted run's. ``rank``/``world_size``: this process's share (:class:`EpochSampler`);
    every rank gets ``len(self)`` batches per training epoch."""

    def __init__(self, dataset: FinetuneDataset, batch_size: int, *, train: bool, seed: int = 0,
                 workers: int = 0, sample_weights: np.ndarray | None = None, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        self.dataset, self.batch_size, self.train, self.seed = dataset, batch_size, train, seed
        self.workers, self.drop_last, self.rank, self.world_size = workers, drop_last, rank, world_size
        self.sampler = EpochSampler(len(dataset), seed, shuffle=train, weights=sample_weights, batch_size=batch_size,
                                    rank=rank, world_size=world_size, drop_last=drop_last)

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.train:
            return train_steps(n, self.batch_size, self.world_size, self.drop_last)
        m = len(eval_plan(n, self.rank, self.world_size))
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def __iter__(self):
        # the next pass of a training loader is the next epoch unless set_epoch says otherwise
        return self._counted(self._batches(), next_epoch=self.train)

    def _batches(self):
        self.sampler.epoch, self.sampler.start = self.epoch, self.batch_in_epoch * self.batch_size
        # A private generator: creating the DataLoader iterator must not draw from the process
        # RNG (drop path, mixup), or a resumed run would draw differently from the uninterrupted one.
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch * 104_729 + self.batch_in_epoch)
        dl = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler, num_workers=self.workers,
                        drop_last=self.drop_last, pin_memory=torch.cuda.is_available(), generator=g,
                        persistent_workers=False)
        yield from dl

    def state_dict(self) -> dict:
        return {"kind": "torch_finetune", "epoch": self.epoch, "batches_done": self.batch_in_epoch,
                "seed": self.seed, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """The seed is the state's (the sample order and augmentation follow it); rank and world
        size must be this loader's."""
        # states written before they carried a kind came from this loader
        check_state({"kind": "torch_finetune", **state}, "torch_finetune", rank=self.rank, world_size=self.world_size)
        self.seed = self.sampler.seed = int(state["seed"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batches_done"])


# ---------------------------------------------------------------------------- the loader choice

def dali_module(loader: str):
    """``dali_pipes.finetune`` when ``loader == "dali"`` (None for the torch loader); a clear
    error when it, or DALI itself, cannot be imported."""
    if loader != "dali":
        return None
    try:
        return importlib.import_module("dali_pipes.finetune")
    except ImportError as e:
        raise RuntimeError(f"--loader dali needs dali_pipes.finetune and NVIDIA DALI ({e}); "
                           "use --loader torch") from e


def build_finetune_loader(records: Sequence[Record], *, train: bool, batch_size: int, tcfg: TransformConfig,
                          loader: str = "torch", mode: str | None = None, seed: int = 0, workers: int = 0,
                          sample_weights: np.ndarray | None = None, drop_last: bool = False,
                          device: torch.device | None = None, rank: int = 0, world_size: int = 1):
    """The single switch between loaders; both yield the §2 fine-tune batch.

    device: where the model runs; the DALI loader decodes there (GPU: mixed decode, float32
    output so autocast decides the compute precision) and on the CPU otherwise.

    records: labelled images (paths, or in-memory arrays for the torch loader).
    mode: transform mode (``train``/``probe``/``eval``); defaults to ``train`` if ``train`` else ``eval``.
    sample_weights: per-record sampling weights (class-balanced sampling), train only.
    rank, world_size: this process's share of ``records`` (all ranks get the full list): train —
    its slice of every global batch of ``batch_size x world_size``, the same step count on every
    rank; eval — a contiguous chunk, every record on exactly one rank (``dali_pipes.finetune_plan``'s
    ``train_plan`` / ``eval_plan``, shared by both loaders).

    ``loader="dali"`` imports ``dali_pipes.finetune`` and calls its ``build_finetune_loader``
    with these same keyword arguments.
    """
    mode = mode or ("train" if train else "eval")
    if loader == "dali":
        mod = dali_module(loader)
        if any(r.path is None for r in records):
            raise RuntimeError("the DALI loader reads files; in-memory records need --loader torch")
        cuda = device is not None and device.type == "cuda"
        return mod.build_finetune_loader(records, train=train, batch_size=batch_size, tcfg=tcfg, mode=mode,
                                         seed=seed, workers=workers, sample_weights=sample_weights,
                                         drop_last=drop_last, device="gpu" if cuda else "cpu",
                                         device_id=(device.index or 0) if cuda else None,
                                         gpu_dtype=torch.float32, rank=rank, world_size=world_size)
    if loader != "torch":
        raise ValueError(f"unknown loader {loader!r} (torch or dali)")
    ds = FinetuneDataset(records, build_transform(tcfg, mode))
    return TorchFinetuneLoader(ds, batch_size, train=train, seed=seed, workers=workers,
                               sample_weights=sample_weights if train else None, drop_last=drop_last,
                               rank=rank, world_size=world_size)
