"""PyTorch baseline loader with the DALI loader's contract (indexed tar reads + DataLoader +
torchvision v2): for platforms without DALI, and as the benchmark baseline.

An epoch is one seeded permutation (seed, epoch) of the split's N samples, cut into global
batches of ``world_size x batch_size``; rank r takes rows ``[r*B, (r+1)*B)`` of each. Hence:

- every rank has the same number of batches per epoch, ``N // (world*B)``, whatever the shard
  sizes or the number of workers (no rank can run out early and hang the others in a collective);
  the ``N mod (world*B)`` samples at the permutation's tail, a different random set each epoch,
  are not seen in that epoch;
- no sample is seen twice within an epoch, on any rank;
- the position in an epoch is one number, the global samples consumed so far. A restored loader
  continues from it at any world size: 2 ranks x B and 1 rank x 2B see the same global batches;
- each sample's augmentation is drawn from a generator seeded by (seed, epoch, sample id), so it
  depends on neither the position nor the rank.

Samples are read by random access through the ``.idx`` offsets (``os.pread``), so a resumed loader
never reads what was consumed. DataLoader workers share the rank's batches round-robin (batch j
from worker ``j mod W``: the order in which ``in_order=True`` yields them).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2

from sharder.codec import decode
from sharder.keys import unit_interval

from .loader import EpochCounter, check_state, expand_channels
from .options import PretrainOptions
from .pretrain import sample_id
from .shards import ShardSetError, check_complete, sample_index, shard_set


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's sample order (int64[n]); depends only on (seed, epoch), never on the layout."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class _RankBatches(IterableDataset):
    """The rank's batches ``j = 0 .. n-1`` of one epoch from global position ``start``; worker w
    of W builds batches ``j = w, w+W, ...``."""

    def __init__(self, owner: "TorchPretrainLoader", epoch: int, start: int, n: int):
        self.o, self.epoch, self.start, self.n = owner, epoch, start, n

    def __iter__(self):
        o, opts = self.o, self.o.opts
        wi = get_worker_info()
        w, nw = (wi.id, wi.num_workers) if wi else (0, 1)
        perm = epoch_permutation(len(o.refs), opts.seed, self.epoch)
        tf = v2.Compose([
            v2.RandomResizedCrop(opts.img_size, scale=opts.scale, ratio=opts.ratio, antialias=True),
            v2.RandomHorizontalFlip(opts.hflip),
        ])
        fds: dict[int, int] = {}
        try:
            for j in range(w, self.n, nw):
                first = self.start + j * o.global_batch + o.rank * opts.batch_size
                imgs, ids = [], []
                for i in perm[first:first + opts.batch_size]:
                    ref = o.refs[i]
                    if ref.shard not in fds:
                        fds[ref.shard] = os.open(o.paths[ref.shard], os.O_RDONLY)
                    img_b, meta_b = (os.pread(fds[ref.shard], ref.members[e][1], ref.members[e][0])
                                     for e in (o.codec, "json"))
                    sid = sample_id(meta_b)
                    torch.manual_seed(int(unit_interval(opts.seed, self.epoch, sid) * 2**62))
                    x = torch.from_numpy(decode(img_b, o.codec))[None]  # [1, H, W] uint8
                    imgs.append(tf(x))
                    ids.append(sid)
                x = torch.stack(imgs).float().div_(255.0)  # [B, 1, img_size, img_size]
                yield {"image": (x - o.mean) / o.std, "keys": ids}
        finally:
            for fd in fds.values():
                os.close(fd)


class TorchPretrainLoader(EpochCounter):
    """A :class:`~dali_pipes.loader.Loader` yielding :class:`~dali_pipes.loader.PretrainBatch`
    (as DaliPretrainLoader); ``opts.num_threads`` DataLoader workers.

    Its position is global: ``position`` samples of the epoch consumed, ``batch_in_epoch`` whole
    global batches of them plus ``_offset`` (< one global batch; non-zero only after a state from
    another world size or batch was loaded)."""

    def __init__(self, data: str | Path, opts: PretrainOptions, rank: int = 0, world_size: int = 1,
                 return_keys: bool = False):
        self.opts, self.rank, self.world_size, self.return_keys = opts, rank, world_size, return_keys
        self.workers = max(1, opts.num_threads)
        ss = shard_set(data, opts.split, 1)  # samples, not shards, are split: any shard count works
        self.mean, self.std, self.codec = ss.manifest.mean, ss.manifest.std, ss.manifest.codec
        self.paths = [str(p) for p in ss.paths]
        self.refs, self.incomplete = sample_index(ss.index_paths, (self.codec, "json"))
        check_complete(self.incomplete, (self.codec, "json"), opts.skip_corrupt)
        self.global_batch = world_size * opts.batch_size
        if len(self.refs) < self.global_batch:
            raise ShardSetError(f"{len(self.refs)} {opts.split} sample(s) in {ss.manifest.root} are fewer than one "
                                f"global batch of {world_size} rank(s) x batch {opts.batch_size}: use fewer ranks or "
                                f"a smaller batch")
        self._offset = 0

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        return len(self.refs) // self.global_batch

    @property
    def position(self) -> int:
        """Global samples of this epoch already consumed (all ranks)."""
        return self._offset + self.batch_in_epoch * self.global_batch

    def __iter__(self):
        yield from self._counted(self._batches())
        self._offset = 0

    def _batches(self):
        left = (len(self.refs) - self.position) // self.global_batch
        dl = DataLoader(_RankBatches(self, self.epoch, self.position, left), batch_size=None,
                        num_workers=self.workers, persistent_workers=False, prefetch_factor=2, in_order=True)
        for batch in dl:
            if not self.return_keys:
                batch.pop("keys")
            batch["image"] = expand_channels(batch["image"], self.opts.in_chans)
            yield batch

    def state_dict(self) -> dict:
        """The same on every rank: (epoch, global samples consumed). Valid at any world size."""
        return {"kind": "torch", "epoch": self.epoch, "position": self.position,
                "global_batch": self.global_batch, "samples": len(self.refs), "seed": self.opts.seed}

    def load_state_dict(self, state: dict) -> None:
        """Valid at any world size and batch size: the position is global (module doc)."""
        check_state(state, "torch", samples=len(self.refs), seed=self.opts.seed)
        self.epoch = int(state["epoch"])
        # states written before positions were global counted this rank's batches
        pos = state["position"] if "position" in state else state["batch_in_epoch"] * self.global_batch
        self.batch_in_epoch, self._offset = divmod(min(int(pos), len(self.refs)), self.global_batch)
