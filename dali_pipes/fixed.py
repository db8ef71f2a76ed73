"""A deterministic loader for debugging and for equivalence tests: the first ``batches`` global
batches of the split (shard order, no shuffle, no augmentation: resize to img_size), repeated.

Rank ``r`` of ``world`` gets rows ``[r*B, (r+1)*B)`` of each global batch of ``world*B``, so a
run at world size 1 with batch 2B sees exactly the data of a run at world size 2 with batch B.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from sharder.codec import decode
from sharder.shards import iter_shard

from .options import PretrainOptions
from .shards import shard_set


class FixedBatchLoader:
    def __init__(self, data: str | Path, opts: PretrainOptions, rank: int = 0, world_size: int = 1,
                 return_keys: bool = False, batches: int = 4):
        ss = shard_set(data, opts.split, 1)
        self.opts, self.rank, self.world_size = opts, rank, world_size
        self.mean, self.std = ss.manifest.mean, ss.manifest.std
        need = batches * opts.batch_size * world_size  # at most
        imgs, keys = [], []
        for p in ss.paths:
            for _, mem in iter_shard(p):
                img = decode(mem[ss.manifest.codec], ss.manifest.codec)
                imgs.append(cv2.resize(img, (opts.img_size, opts.img_size), interpolation=cv2.INTER_AREA))
                keys.append(json.loads(mem["json"])["source"])
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
        self.keys = keys
        self.epoch, self.batch_in_epoch = 0, 0

    def __len__(self) -> int:
        return self.data.shape[0]

    def __iter__(self):
        b = self.opts.batch_size
        while self.batch_in_epoch < len(self):
            x = self.data[self.batch_in_epoch, self.rank * b:(self.rank + 1) * b]
            if self.opts.in_chans == 3:
                x = x.expand(-1, 3, -1, -1)
            self.batch_in_epoch += 1
            yield {"image": x.clone()}
        self.epoch += 1
        self.batch_in_epoch = 0

    def state_dict(self) -> dict:
        return {"kind": "fixed", "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        """Valid at any world size: every layout sees the same global batches."""
        if state.get("kind") != "fixed":
            raise ValueError(f"loader state is from a {state.get('kind')!r} loader, not fixed")
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
