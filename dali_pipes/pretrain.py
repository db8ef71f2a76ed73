"""DALI pretraining pipeline and its loader object (design §2).

    shards (.tar + .idx) -> fn.readers.webdataset (per-rank shard, shuffle buffer)
      -> fn.decoders.image_random_crop (decode only the crop; nvJPEG + HW decoder on GPU)
      -> fn.resize(img_size) -> fn.crop_mirror_normalize(flip, mean/std, CHW)
      -> {"image": Tensor[B, C, img_size, img_size]}  (float32 on CPU, bf16 on GPU)

The loader streams continuously: an "epoch" is ``len(loader)`` batches
(= samples of the split // world size // batch, the same on every rank: DALI splits the samples,
not the shards, across ranks), and the reader simply continues into the next pass. Its state is
DALI's own checkpoint (reader position + every RNG) plus the batch counter, so a restored loader
yields exactly the batches an uninterrupted one would have yielded; each rank saves and restores
its own.

A DALI checkpoint belongs to one (rank, world size): restored on a different world size the
loader cannot continue the readers. It continues the epoch from its global sample position
(the same number of samples left in the epoch, so the step schedule holds) with freshly seeded
readers: within that one epoch a sample may be seen again or not at all; later epochs are
ordinary passes. The torch loader continues exactly instead (see torch_loader.py).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch

from .loader import EpochCounter, check_state, expand_channels
from .options import PretrainOptions
from .shards import check_complete, incomplete_samples, shard_set, shown

log = logging.getLogger("dali_pipes")


def resolve_device(opts: PretrainOptions) -> str:
    if opts.device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if opts.device == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("DALI pipeline asked for device='gpu' (mixed decode) but no CUDA GPU is "
                           "visible: pass device='cpu' (--data-device cpu) or run on a GPU node")
    return opts.device


def build_pretrain_pipeline(paths: list[str], index_paths: list[str], opts: PretrainOptions,
                            mean: float, std: float, shard_id: int, num_shards: int,
                            checkpoint: str | None = None):
    """Returns a built DALI pipeline yielding (images [B, C, H, W], keys-json bytes)."""
    from nvidia.dali import fn, pipeline_def, types

    device = resolve_device(opts)
    gpu = device == "gpu"

    @pipeline_def(enable_checkpointing=True)
    def pipe():
        jpeg, meta = fn.readers.webdataset(
            paths=paths, index_paths=index_paths, ext=["jpg", "json"], name="reader",
            random_shuffle=True, initial_fill=opts.shuffle_buffer, seed=opts.seed + 7919 * shard_id,
            shard_id=shard_id, num_shards=num_shards, pad_last_batch=False,
            missing_component_behavior="skip" if opts.skip_corrupt else "error")
        decode_kw = {"hw_decoder_load": opts.hw_decoder_load} if gpu else {}
        img = fn.decoders.image_random_crop(
            jpeg, device="mixed" if gpu else "cpu", output_type=types.GRAY,
            random_area=list(opts.scale), random_aspect_ratio=list(opts.ratio), num_attempts=10,
            **decode_kw)
        img = fn.resize(img, size=[opts.img_size, opts.img_size], antialias=True)
        img = fn.crop_mirror_normalize(
            img, mirror=fn.random.coin_flip(probability=opts.hflip), mean=[mean * 255.0],
            std=[std * 255.0], output_layout="CHW", dtype=types.FLOAT16 if gpu else types.FLOAT)
        return img, meta

    p = pipe(batch_size=opts.batch_size, num_threads=opts.num_threads,
             device_id=opts.device_id if gpu else None, seed=opts.seed + 104729 * shard_id,
             prefetch_queue_depth=opts.prefetch,
             **({"checkpoint": checkpoint} if checkpoint else {}))
    p.build()
    return p


def sample_id(meta_json: bytes) -> str:
    """A sample's identity from its metadata (source hash, axis, frame): unique per sample."""
    m = json.loads(meta_json)
    return f"{m['source']}:{m['axis']}:{m['frame']}"


def _to_torch(tl, gpu: bool) -> torch.Tensor:
    t = tl.as_tensor()
    if not gpu:
        return torch.from_numpy(np.array(t))
    from nvidia.dali.plugin.pytorch import feed_ndarray

    out = torch.empty(t.shape(), dtype=torch.float16, device="cuda")
    feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream())
    return out


class DaliPretrainLoader(EpochCounter):
    """A :class:`~dali_pipes.loader.Loader` yielding :class:`~dali_pipes.loader.PretrainBatch`.

    rank/world_size pick this rank's part of the split; ``return_keys`` adds the sample keys
    (list[str]) to each batch, used by tests and to audit what a run saw.
    """

    def __init__(self, data: str | Path, opts: PretrainOptions, rank: int = 0, world_size: int = 1,
                 return_keys: bool = False):
        self.opts, self.rank, self.world_size, self.return_keys = opts, rank, world_size, return_keys
        ss = shard_set(data, opts.split, world_size)
        self.mean, self.std = ss.manifest.mean, ss.manifest.std
        if ss.manifest.codec != "jpg":
            raise ValueError(f"the DALI pipeline reads jpg shards; these are {ss.manifest.codec!r}: "
                             f"use --loader torch or rebuild with codec jpg")
        self.paths = [str(p) for p in ss.paths]
        self.index_paths = [str(p) for p in ss.index_paths]
        self.gpu = resolve_device(opts) == "gpu"
        self.incomplete = incomplete_samples(ss.index_paths, ("jpg", "json"))
        check_complete(self.incomplete, ("jpg", "json"), opts.skip_corrupt)
        self.samples = ss.samples - len(self.incomplete)  # of the split, all ranks
        per_rank = self.samples // world_size
        self.batches_per_epoch = per_rank // opts.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{per_rank} samples per rank < batch size {opts.batch_size}")
        self._pipe = None
        self._ckpt: str | None = None
        self._seed = opts.seed  # readers are reseeded when a state from another world size is loaded

    def _pipeline(self):
        if self._pipe is None:
            opts = dataclasses.replace(self.opts, seed=self._seed)
            self._pipe = build_pretrain_pipeline(self.paths, self.index_paths, opts, self.mean,
                                                 self.std, self.rank, self.world_size, self._ckpt)
        return self._pipe

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        yield from self._counted(self._batches())
        if self.incomplete:
            log.warning("epoch %d: skipped %d incomplete sample(s) (skip_corrupt): %s", self.epoch - 1,
                        len(self.incomplete), shown(self.incomplete))

    def _batches(self):
        pipe = self._pipeline()
        while self.batch_in_epoch < self.batches_per_epoch:
            img, meta = pipe.run()
            image = _to_torch(img, self.gpu)
            batch = {"image": expand_channels(image.to(torch.bfloat16) if self.gpu else image, self.opts.in_chans)}
            if self.return_keys:
                batch["keys"] = [sample_id(bytes(np.array(meta[i]))) for i in range(len(meta))]
            yield batch

    def state_dict(self) -> dict:
        """Position after the last yielded batch: DALI checkpoint (base64) + counters."""
        ck = self._pipeline().checkpoint()
        ck = ck if isinstance(ck, str) else ck.decode("latin1")
        return {"kind": "dali", "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "rank": self.rank, "world_size": self.world_size, "batch_size": self.opts.batch_size,
                "seed": self.opts.seed, "samples": self.samples,
                "dali_checkpoint": base64.b64encode(ck.encode("latin1")).decode()}

    def load_state_dict(self, state: dict) -> None:
        """Exact when ``state`` is this rank's own (same rank, world size, batch); otherwise the
        epoch continues from its global sample position with reseeded readers (module doc)."""
        check_state(state, "dali", seed=self.opts.seed, samples=self.samples)  # any layout: see below
        layout = (state.get("rank", self.rank), state.get("world_size", self.world_size),
                  state.get("batch_size", self.opts.batch_size))
        self.epoch = int(state["epoch"])
        self._pipe = None  # rebuilt lazily
        if layout == (self.rank, self.world_size, self.opts.batch_size):
            self.batch_in_epoch = int(state["batch_in_epoch"])
            self._ckpt = base64.b64decode(state["dali_checkpoint"]).decode("latin1")
            return
        consumed = int(state["batch_in_epoch"]) * layout[1] * layout[2]  # global samples of this epoch
        per_step = self.world_size * self.opts.batch_size
        self.batch_in_epoch = min(-(-consumed // per_step), self.batches_per_epoch)
        self._ckpt = None
        self._seed = self.opts.seed + 1_000_003 * (self.epoch + 1)
        log.warning("dali loader: state of rank %d/%d (batch %d) restored on rank %d/%d (batch %d): epoch %d "
                    "continues at sample %d of the epoch with reseeded readers (samples may repeat within "
                    "this epoch)", layout[0], layout[1], layout[2], self.rank, self.world_size,
                    self.opts.batch_size, self.epoch, consumed)
