"""A deterministic loader for debugging and for equivalence tests: the first ``batches`` global
batches of the split (shard order, no shuffle, no augmentation: resize to img_size), repeated.

Rank ``r`` of ``world`` gets rows ``[r*B, (r+1)*B)`` of each global batch of ``world*B``, so a
run at world size 1 with batch 2B sees exactly the data of a run at world size 2 with batch B.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from sharder.codec import decode
from sharder.shards import iter_shard

from .loader import EpochCounter, check_state, expand_channels
from .options import PretrainOptions
from .pretrain import sample_id
from .shards import shard_set


class FixedBatchLoader(EpochCounter):
    """A :class:`~dali_pipes.loader.Loader` yielding :class:`~dali_pipes.loader.PretrainBatch`
    from ``batches`` global batches held in memory (``keys`` with ``return_keys``)."""

    def __init__(self, data: str | Path, opts: PretrainOptions, rank: int = 0, world_size: int = 1,
                 return_keys: bool = False, batches: int = 4):
        ss = shard_set(data, opts.split, 1)
        self.opts, self.rank, self.world_size, self.return_keys = opts, rank, world_size, return_keys
        self.mean, self.std = ss.manifest.mean, ss.manifest.std
        need = batches * opts.batch_size * world_size  # at most
        imgs, keys = [], []
        for p in ss.paths:
            for _, mem in iter_shard(p):
                img = decode(mem[ss.manifest.codec], ss.manifest.codec)
                imgs.append(cv2.resize(img, (opts.img_size, opts.img_size), interpolation=cv2.INTER_AREA))
                keys.append(sample_id(mem["json"]))
                if len(imgs) == need:
                    break
            if len(imgs) == need:
                break
        batches = len(imgs) // (opts.batch_size * world_size)
        if batches == 0:
            raise ValueError(f"{len(imgs)} samples < one global batch of {opts.batch_size * world_size}")
        imgs = imgs[:batches * opts.batch_size * world_size]
        x = torch.from_numpy(np.stack(imgs)).float().div_(255.0).sub_(self.mean).div_(self.std)
        self.data = x[:, None].reshape(batches, world_size * opts.batch_size, 1, opts.img_size, opts.img_size)
        self.keys = keys[:len(imgs)]  # sample ids in global batch order

    def __len__(self) -> int:
        return self.data.shape[0]

    def __iter__(self):
        return self._counted(self._batches())

    def _batches(self):
        b = self.opts.batch_size
        while self.batch_in_epoch < len(self):
            x = self.data[self.batch_in_epoch, self.rank * b:(self.rank + 1) * b]
            batch = {"image": expand_channels(x, self.opts.in_chans).clone()}
            if self.return_keys:
                first = self.batch_in_epoch * b * self.world_size + self.rank * b
                batch["keys"] = self.keys[first:first + b]
            yield batch

    def state_dict(self) -> dict:
        return {"kind": "fixed", "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Valid at any world size: every layout sees the same global batches."""
        check_state(state, "fixed")
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
