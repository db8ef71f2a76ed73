"""DALI fine-tune pipelines and their loader object (design §2 fine-tune batch):
``{"image": Tensor[B, C, img_size, img_size], "label": LongTensor[B], "index": LongTensor[B]}``
(``index``: the record each sample came from), float32 on CPU,
bf16 on GPU (the pipeline emits fp16, cast by torch).

    train:  fn.readers.file(files, labels) -> fn.decoders.image_random_crop (GRAY; nvJPEG/mixed on
            GPU, the RandomResizedCrop fused into the decode) -> fn.resize(img_size)
            -> fn.rotate(±rotate_deg) -> RandAugment (nvidia.dali.auto_aug.rand_augment)
            -> fn.crop_mirror_normalize(flip, mean/std, CHW) -> fn.erase (random erasing)
    probe:  decode + random resized crop -> resize -> flip + normalise   (MAE linprobe)
    eval:   decode -> fn.resize(resize_shorter=img_size / crop_pct) -> centre crop + normalise

With ``aug="timm"`` (the MAE recipe, ``trainer.recipes``) the resizes are cubic, RandAugment is the
timm string's closest DALI form and random erasing fills with per-pixel noise
(``dali_pipes.randaug``, whose table lists what differs from timm).

It is the DALI twin of ``dali_pipes.finetune_torch`` (same :class:`TransformConfig`, same
``build_finetune_loader`` keywords, same epoch semantics):

* **Epochs are explicit file orders.** Each epoch's order is drawn in Python
  (``dali_pipes.finetune_plan``, shared with the torch loader) from
  ``np.random.default_rng((seed, epoch))``: a permutation (train), the records in order (eval), or
  — with ``sample_weights`` (class-balanced sampling) — ``len(records)`` draws with replacement
  proportional to the weights. The reader gets that list with ``random_shuffle=False`` and
  ``pad_last_batch=True``, so batch ``k`` holds exactly ``order[k*B:(k+1)*B]``; the padded tail of
  the last batch (copies of the last sample) is trimmed, so every record of an eval pass is
  counted exactly once, in record order. (DALI's own ``random_shuffle`` is a buffered shuffle
  whose passes do not each contain every sample once, and its file list is fixed at build time,
  which rules out per-epoch resampling.) A shuffled or resampled loader builds a fresh pipeline
  per epoch (seeded by (seed, epoch)); an eval loader keeps one pipeline, whose reader wraps to
  the first record after each padded pass.
* **Exact resume.** ``state_dict`` holds the epoch, the batch counter and DALI's checkpoint of the
  running pipeline (reader position + every RNG, base64), as in ``dali_pipes.pretrain``; a restored
  loader rebuilds the same epoch order and pipeline from the checkpoint and yields exactly the
  batches the uninterrupted one would have. At the start of a shuffled epoch no checkpoint is
  needed: the fresh pipeline is a function of (seed, epoch).
* **RandAugment on gray images.** DALI's RandAugment suite includes ``color`` (fn.saturation),
  which crashes the process on 1-channel input (DALI 2.4, CPU: segfault). The gray image is
  therefore replicated to 3 channels before RandAugment and one channel taken after it (or all
  three kept for ``in_chans == 3``). On an R = G = B image every op of the suite acts identically
  on each channel and saturation is the identity — what torchvision's RandAugment does with a
  1-channel tensor — so the 14-op distribution matches the torch loader's.

Known differences from the torch loader: rotation and RandAugment warps interpolate linearly
(torchvision: nearest); random erasing clamps an oversized box to the image instead of
redrawing it. 16-bit images are not left to the decoder (which divides by 257): at index time
they are replaced by 8-bit copies made by ``sharder.intensity`` — the conversion the sharder
and the torch loader use — so every path sees the same 8-bit image.
"""
from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sharder.intensity import eight_bit_files
from sharder.readers.detect import HEAD_BYTES
from sharder.readers.detect import image_format as sniff_image_format

from .finetune_plan import check_rank, eval_plan, global_order, train_plan, train_steps
from .loader import EpochCounter, check_state
from .pretrain import _to_torch, resolve_device
from .randaug import parse_timm_randaug, random_erase
from .randaug import rand_augment as timm_rand_augment

MODES = ("train", "probe", "eval")


@dataclass
class FinetuneOptions:
    """Fine-tune augmentation and reader settings (pixel statistics on the 0..1 scale)."""

    img_size: int = 224
    in_chans: int = 1  # 1: gray; 3: the gray channel repeated (ImageNet-initialised models)
    batch_size: int = 32
    num_threads: int = 2  # DALI CPU threads
    seed: int = 0
    mode: str = "train"  # train (full augmentation) | probe (crop + flip) | eval (resize + centre crop)
    shuffle: bool = True  # a new permutation each epoch (train); eval reads the records in order
    device: str = "auto"  # "cpu" | "gpu" | "auto" (gpu when CUDA is available)
    device_id: int | None = None  # GPU ordinal; None: torch's current device
    scale: tuple[float, float] = (0.2, 1.0)  # random resized crop area (tcfg.crop_min, 1)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    rotate_deg: float = 10.0  # uniform in ±rotate_deg; 0 disables
    randaug: bool = True
    randaug_n: int = 2
    randaug_m: int = 9  # of 31 magnitude bins (torchvision's RandAugment convention)
    # aug="timm": the MAE recipe mapped as close as DALI allows (dali_pipes.randaug): timm
    # RandAugment string, cubic resizes, timm random erasing (re_mode / re_count)
    aug: str = "torchvision"
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    interpolation: str = "bicubic"
    re_mode: str = "pixel"
    re_count: int = 1
    reprob: float = 0.25  # random erasing probability (after normalisation, value 0); train only
    crop_pct: float = 0.875  # eval: short side -> floor(img_size / crop_pct), centre crop img_size
    mean: tuple[float, ...] = (0.449,)
    std: tuple[float, ...] = (0.226,)
    drop_last: bool = False
    prefetch: int = 2
    rank: int = 0  # this process's share of the records (see train_plan / eval_plan)
    world_size: int = 1
    gpu_dtype: torch.dtype = torch.bfloat16  # image dtype of GPU batches

    @classmethod
    def from_transform(cls, tcfg, *, mode: str, train: bool, batch_size: int, seed: int = 0,
                       workers: int = 0, drop_last: bool = False, **kw) -> FinetuneOptions:
        """Options equivalent to the torch loader's ``TransformConfig`` + loader arguments."""
        return cls(img_size=int(tcfg.img_size), in_chans=int(tcfg.in_chans), batch_size=int(batch_size),
                   num_threads=max(1, int(workers)), seed=int(seed), mode=mode, shuffle=bool(train),
                   scale=(float(tcfg.crop_min), 1.0), rotate_deg=float(tcfg.rotate_deg),
                   randaug=tcfg.randaug_ops > 0, randaug_n=int(tcfg.randaug_ops),
                   randaug_m=int(tcfg.randaug_magnitude), reprob=float(tcfg.reprob),
                   crop_pct=float(tcfg.crop_pct), mean=tuple(float(m) for m in tcfg.mean),
                   std=tuple(float(s) for s in tcfg.std), drop_last=bool(drop_last),
                   aug=getattr(tcfg, "aug", "torchvision"), auto_augment=getattr(tcfg, "auto_augment", None),
                   interpolation=getattr(tcfg, "interpolation", "bicubic"), re_mode=getattr(tcfg, "re_mode", "pixel"),
                   re_count=int(getattr(tcfg, "re_count", 1)), hflip=float(getattr(tcfg, "hflip", 0.5)), **kw)

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown transform mode {self.mode!r} ({' | '.join(MODES)})")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"{len(self.mean)} mean / {len(self.std)} std values for {self.in_chans} channels")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        check_rank(self.rank, self.world_size)
        if self.aug not in ("torchvision", "timm"):
            raise ValueError(f"unknown augmentation {self.aug!r} (torchvision or timm)")


# ---------------------------------------------------------------------------- file checks

# the still-image formats DALI's decoder reads (names of sharder.readers.image_format, the one
# magic-byte table)
DALI_IMAGE_FORMATS = ("jpeg", "png", "bmp", "tiff", "jpeg2000", "webp", "pnm")


def image_format(path: str | Path) -> str | None:
    """The image format DALI's decoder would read ``path`` as, from its first bytes (None: not an
    image DALI decodes). Raises OSError when the file cannot be opened."""
    with open(path, "rb") as fh:
        fmt = sniff_image_format(fh.read(HEAD_BYTES))
    return fmt if fmt in DALI_IMAGE_FORMATS else None


def check_image_files(paths: Sequence[str | Path]) -> None:
    """Fail before any pipeline is built when a record's file is missing or not an image format
    DALI decodes (JPEG, PNG, BMP, TIFF, JPEG 2000, WebP, PNM), naming the file."""
    for p in paths:
        try:
            fmt = image_format(p)
        except OSError as e:
            raise FileNotFoundError(f"{p}: cannot read image file for the DALI loader ({e})") from e
        if fmt is None:
            raise ValueError(f"{p}: not an image format the DALI decoder reads (JPEG, PNG, BMP, TIFF, "
                             f"JPEG 2000, WebP, PNM); convert it or use --loader torch")


def _undecodable(paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` OpenCV cannot decode either (to name the file behind a DALI decode error)."""
    try:
        import cv2
    except ImportError:
        return []
    return [p for p in paths if cv2.imread(p, cv2.IMREAD_UNCHANGED) is None]


# ---------------------------------------------------------------------------- pipeline

def _pipeline_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] % (2**31 - 1))


def build_finetune_pipeline(files: list[str], labels: list[int], opts: FinetuneOptions, seed: int,
                            checkpoint: str | None = None):
    """A built DALI pipeline reading ``files`` in the given order (``pad_last_batch``) and
    yielding (images [B, C, H, W] normalised, labels [B, 1] int32)."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath
    from nvidia.dali.auto_aug import rand_augment

    opts.check()
    gpu = resolve_device(opts) == "gpu"
    size, mode = opts.img_size, opts.mode
    augment = mode == "train"
    timm = opts.aug == "timm"
    ra_spec = parse_timm_randaug(opts.auto_augment) if timm and augment and opts.auto_augment else None
    use_ra = augment and (ra_spec is not None and ra_spec.n > 0 if timm else opts.randaug and opts.randaug_n > 0)
    # the MAE recipe resizes bicubic (timm "random" picks per sample; DALI: cubic)
    interp = ({"interp_type": types.INTERP_LINEAR if opts.interpolation == "bilinear" else
               types.INTERP_NN if opts.interpolation == "nearest" else types.INTERP_CUBIC} if timm else {})
    mean = [m * 255.0 for m in opts.mean]
    std = [s * 255.0 for s in opts.std]
    out_dtype = types.FLOAT16 if gpu else types.FLOAT

    @pipeline_def(enable_conditionals=True, enable_checkpointing=True)
    def pipe():
        data, label = fn.readers.file(files=files, labels=labels, random_shuffle=False, pad_last_batch=True,
                                      name="reader")
        dev = "mixed" if gpu else "cpu"
        if mode == "eval":
            img = fn.decoders.image(data, device=dev, output_type=types.GRAY)
            img = fn.resize(img, resize_shorter=math.floor(size / opts.crop_pct), antialias=True, **interp)
        else:
            img = fn.decoders.image_random_crop(data, device=dev, output_type=types.GRAY,
                                                random_area=list(opts.scale),
                                                random_aspect_ratio=list(opts.ratio), num_attempts=10)
            img = fn.resize(img, size=[size, size], antialias=True, **interp)
        if augment and opts.rotate_deg > 0:
            img = fn.rotate(img, angle=fn.random.uniform(range=[-opts.rotate_deg, opts.rotate_deg]),
                            keep_size=True, fill_value=0)
        if opts.in_chans == 3 or use_ra:  # gray -> R = G = B (see the module doc on RandAugment)
            img = fn.cat(img, img, img, axis=2)
        if use_ra and timm:  # timm's fill is the image mean (img_mean), gray here
            img = timm_rand_augment(img, ra_spec, size=size, fill_value=min(255, round(255 * opts.mean[0])))
        elif use_ra:
            img = rand_augment.rand_augment(img, n=opts.randaug_n, m=opts.randaug_m, shape=[size, size],
                                            fill_value=0)
        if use_ra and opts.in_chans == 1:
            img = img[:, :, 0:1]
        cmn = {"crop": [size, size]} if mode == "eval" else {
            "mirror": fn.random.coin_flip(probability=opts.hflip)}
        img = fn.crop_mirror_normalize(img, mean=mean, std=std, output_layout="CHW", dtype=out_dtype, **cmn)
        if augment and opts.reprob > 0 and timm:
            img = random_erase(img, prob=opts.reprob, mode=opts.re_mode, count=opts.re_count)
        elif augment and opts.reprob > 0:  # torchvision RandomErasing(scale=(0.02, 1/3), ratio=(0.3, 3.3), value=0)
            if fn.random.coin_flip(probability=opts.reprob, dtype=types.BOOL):
                area = fn.random.uniform(range=[0.02, 1 / 3])
                aspect = dmath.exp(fn.random.uniform(range=[math.log(0.3), math.log(3.3)]))
                h = dmath.min(dmath.sqrt(area * aspect), 1.0)
                w = dmath.min(dmath.sqrt(area / aspect), 1.0)
                y0 = fn.random.uniform(range=[0.0, 1.0]) * (1.0 - h)
                x0 = fn.random.uniform(range=[0.0, 1.0]) * (1.0 - w)
                img = fn.erase(img, anchor=fn.stack(y0, x0), shape=fn.stack(h, w), axis_names="HW",
                               normalized_anchor=True, normalized_shape=True, fill_value=0.0)
        return img, label

    device_id = None
    if gpu:
        device_id = opts.device_id if opts.device_id is not None else torch.cuda.current_device()
    p = pipe(batch_size=opts.batch_size, num_threads=opts.num_threads, device_id=device_id, seed=seed,
             prefetch_queue_depth=opts.prefetch, **({"checkpoint": checkpoint} if checkpoint else {}))
    p.build()
    return p


# ---------------------------------------------------------------------------- loader

class DaliFinetuneLoader(EpochCounter):
    """A :class:`~dali_pipes.loader.Loader` yielding :class:`~dali_pipes.loader.FinetuneBatch`,
    plus ``set_epoch`` like the torch loader.

    records: objects with ``path`` and ``label`` (``finetune.tasks.Record``), all ranks' records.
    sample_weights: per-record weights; each epoch then draws ``len(records)`` records with
    replacement (class-balanced sampling). Only with ``opts.shuffle`` (train).

    With ``opts.world_size`` > 1 this rank reads its share (:func:`train_plan`: its slice of
    every global batch, the same step count on every rank; :func:`eval_plan`: a contiguous chunk,
    every record on exactly one rank, ``indices`` naming them). The plan is made here in Python
    rather than by the reader's ``shard_id``/``num_shards``, whose contiguous shards of a fixed
    file list could neither be re-drawn per epoch nor give W ranks the global batches of one."""

    def __init__(self, records: Sequence, opts: FinetuneOptions, sample_weights: np.ndarray | None = None):
        opts.check()
        if len(records) == 0:
            raise ValueError("the DALI fine-tune loader got no records")
        missing = [r for r in records if getattr(r, "path", None) is None]
        if missing:
            raise ValueError(f"{len(missing)} record(s) without a file path (e.g. {missing[0].name}): the DALI "
                             "loader reads files; in-memory records need --loader torch")
        self.opts = opts
        self.files = [str(r.path) for r in records]
        self.labels = [int(r.label) for r in records]
        check_image_files(self.files)
        # 16-bit files -> 8-bit copies by the sharder's conversion (DALI's decoder would divide by 257)
        self.files = eight_bit_files(self.files)
        self.n = len(self.files)
        self.weights = None
        if sample_weights is not None:
            if not opts.shuffle:
                raise ValueError("sample_weights (class-balanced sampling) apply to a shuffled train loader only")
            w = np.asarray(sample_weights, dtype=np.float64).reshape(-1)
            if w.shape[0] != self.n or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError(f"sample_weights must be {self.n} finite non-negative values with a positive sum")
            self.weights = w / w.sum()
        self.static = not opts.shuffle and self.weights is None  # the same order every epoch
        self.gpu = resolve_device(opts) == "gpu"
        bs, rank, world = opts.batch_size, opts.rank, opts.world_size
        self.indices = eval_plan(self.n, rank, world) if self.static else None  # this rank's eval records
        if self.static:
            self.epoch_len = len(self.indices)
            self.batches_per_epoch = self.epoch_len // bs if opts.drop_last else math.ceil(self.epoch_len / bs)
        else:
            self.batches_per_epoch = train_steps(self.n, bs, world, opts.drop_last)
            self.epoch_len = len(train_plan(np.arange(self.n), bs, rank, world, opts.drop_last)[0])
        if self.batches_per_epoch == 0 and not (self.static and self.epoch_len == 0):
            raise ValueError(f"{self.n} records < batch size {bs} x {world} rank(s) with drop_last")
        self.reader_batches = math.ceil(self.epoch_len / bs)  # batches of one padded reader pass
        self._pipe = None
        self._order: np.ndarray | None = None
        self._ckpt: str | None = None

    # -- epoch plan
    def epoch_order(self, epoch: int) -> np.ndarray:
        """Record indices this rank reads in ``epoch``, in order (a function of (seed, epoch, rank))."""
        if self.static:
            return self.indices
        o = self.opts
        order = global_order(self.n, seed=o.seed, epoch=epoch, shuffle=True, weights=self.weights)
        return train_plan(order, o.batch_size, o.rank, o.world_size, o.drop_last)[0]

    def _pipeline(self):
        if self._pipe is None:
            ep = 0 if self.static else self.epoch
            self._order = self.epoch_order(ep)
            files = [self.files[i] for i in self._order]
            labels = [self.labels[i] for i in self._order]
            # rank 0 keeps the seed a single-rank run always had; other ranks draw their own
            extra = (self.opts.rank,) if self.opts.rank else ()
            seed = _pipeline_seed(self.opts.seed, ep, 104_729, *extra)
            self._pipe = build_finetune_pipeline(files, labels, self.opts, seed, self._ckpt)
            self._ckpt = None
        return self._pipe

    def _run(self):
        pipe = self._pipeline()
        try:
            return pipe.run()
        except RuntimeError as e:
            self._pipe = None  # DALI invalidates a pipeline after an error
            k, bs = self.batch_in_epoch, self.opts.batch_size
            ahead = list(dict.fromkeys(self.files[i] for i in self._order[k * bs:(k + 1 + self.opts.prefetch) * bs]))
            culprits = _undecodable(ahead)
            what = (f"cannot decode {culprits}" if culprits else
                    f"the files of this and the prefetched batches are {ahead}")
            raise RuntimeError(f"DALI fine-tune pipeline failed in epoch {self.epoch}, batch {k}: {what} ({e})") from e

    def _finish_epoch(self) -> None:
        if self.static:
            # keep the reader aligned with the epoch: consume the batch drop_last left unread
            for _ in range(self.reader_batches - self.batch_in_epoch):
                self._run()
        else:
            self._pipe = None
        self._ckpt = None

    def _restart(self) -> None:
        self._pipe, self._ckpt = None, None

    # -- contract
    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        # an eval loader (static order) keeps its epoch, as the torch loader does
        return self._counted(self._batches(), next_epoch=not self.static)

    def _batches(self):
        bs = self.opts.batch_size
        while self.batch_in_epoch < self.batches_per_epoch:
            img, label = self._run()
            valid = min(bs, self.epoch_len - self.batch_in_epoch * bs)
            image = _to_torch(img, self.gpu)[:valid]
            if self.gpu:
                image = image.to(self.opts.gpu_dtype)
            lab = torch.from_numpy(np.array(label.as_tensor()).reshape(-1).astype(np.int64))[:valid]
            k0 = self.batch_in_epoch * bs
            index = torch.from_numpy(np.asarray(self._order[k0:k0 + valid], dtype=np.int64))
            yield {"image": image, "label": lab, "index": index}
        self._finish_epoch()

    def state_dict(self) -> dict:
        """Position after the last yielded batch: counters + DALI checkpoint (base64) or None."""
        ck = self._ckpt
        if self._pipe is not None and (self.static or self.batch_in_epoch > 0):
            ck = self._pipe.checkpoint()
        if isinstance(ck, bytes):
            ck = ck.decode("latin1")
        return {"kind": "dali_finetune", "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "seed": self.opts.seed, "n": self.n, "batch_size": self.opts.batch_size,
                "rank": self.opts.rank, "world_size": self.opts.world_size,
                "dali_checkpoint": None if ck is None else base64.b64encode(ck.encode("latin1")).decode()}

    def load_state_dict(self, state: dict) -> None:
        check_state(state, "dali_finetune", seed=self.opts.seed, n=self.n, batch_size=self.opts.batch_size,
                    rank=self.opts.rank, world_size=self.opts.world_size)
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        ck = state.get("dali_checkpoint")
        self._ckpt = None if ck is None else base64.b64decode(ck).decode("latin1")
        self._pipe = None  # rebuilt lazily (from the checkpoint when there is one)


def build_finetune_loader(records: Sequence, *, train: bool, batch_size: int, tcfg, mode: str | None = None,
                          seed: int = 0, workers: int = 0, sample_weights: np.ndarray | None = None,
                          drop_last: bool = False, device: str = "auto", device_id: int | None = None,
                          prefetch: int = 2, gpu_dtype: torch.dtype = torch.bfloat16, rank: int = 0,
                          world_size: int = 1) -> DaliFinetuneLoader:
    """The DALI loader for ``dali_pipes.finetune_torch.build_finetune_loader(..., loader="dali")``: the
    same keywords, plus the DALI-only ``device`` ("auto" | "cpu" | "gpu"), ``device_id``,
    ``prefetch`` and ``gpu_dtype`` (image dtype of GPU batches; CPU batches are float32).

    tcfg: ``dali_pipes.finetune_torch.TransformConfig`` (img_size, in_chans, mean/std, crop_min,
    rotate_deg, randaug_ops/magnitude, reprob, crop_pct). mode: train | probe | eval (default by
    ``train``). workers: DALI CPU threads (at least 1). sample_weights: train only (ignored for
    eval, like the torch loader). rank, world_size: this process's share (see the loader)."""
    mode = mode or ("train" if train else "eval")
    opts = FinetuneOptions.from_transform(tcfg, mode=mode, train=train, batch_size=batch_size, seed=seed,
                                          workers=workers, drop_last=drop_last, device=device,
                                          device_id=device_id, prefetch=prefetch, gpu_dtype=gpu_dtype,
                                          rank=rank, world_size=world_size)
    return DaliFinetuneLoader(records, opts, sample_weights if train else None)


__all__ = ["DaliFinetuneLoader", "FinetuneOptions", "build_finetune_loader", "build_finetune_pipeline",
           "check_image_files", "image_format"]
