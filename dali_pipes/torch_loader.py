"""PyTorch baseline loader with the DALI loader's semantics (webdataset + DataLoader +
torchvision v2): for platforms without DALI, and as the benchmark baseline.

Determinism and exact resume without DALI's checkpoints: each epoch's shard order is a seeded
permutation; rank r, worker w reads shards ``order[r*W + w :: world*W]`` (so shards are split across
``world_size x workers`` and a rank never waits for shards it does not have); samples are shuffled in a
seeded buffer; every sample's augmentation is drawn from a generator seeded by
(seed, epoch, sample id), so it does not depend on position. Resume skips the already-consumed
batches without decoding them.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms import v2

from sharder.codec import decode
from sharder.keys import unit_interval
from sharder.shards import iter_shard

from .options import PretrainOptions
from .pretrain import sample_id
from .shards import ShardSetError, incomplete_samples, shard_set


def _epoch_shards(paths: list[str], seed: int, epoch: int) -> list[str]:
    order = list(paths)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


class _RankWorkerStream(IterableDataset):
    """Yields ready batches for one (rank, worker); the DataLoader interleaves workers."""

    def __init__(self, owner: "TorchPretrainLoader"):
        self.o = owner

    def _raw(self, shards: list[str], seed: int):
        buf: list = []
        rng = random.Random(seed)
        for s in shards:
            for key, mem in iter_shard(Path(s)):
                if self.o.codec not in mem or "json" not in mem:
                    continue  # counted and reported at start (skip_corrupt), else refused there
                buf.append(mem)
                if len(buf) >= self.o.opts.shuffle_buffer:
                    yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    def __iter__(self):
        o, opts = self.o, self.o.opts
        wi = get_worker_info()
        w, nw = (wi.id, wi.num_workers) if wi else (0, 1)
        epoch, skip = o._iter_epoch, o._iter_skip_per_worker[w]
        order = _epoch_shards(o.paths, opts.seed, epoch)
        mine = order[o.rank * nw + w :: o.world_size * nw]
        nb = o._batches_per_worker[w]
        raw = self._raw(mine, hash((opts.seed, epoch, o.rank, w)) & 0xFFFFFFFF)
        tf = v2.Compose([
            v2.RandomResizedCrop(opts.img_size, scale=opts.scale, ratio=opts.ratio, antialias=True),
            v2.RandomHorizontalFlip(opts.hflip),
        ])
        for b in range(nb):
            mems = [next(raw) for _ in range(opts.batch_size)]
            if b < skip:
                continue  # resume: consumed before the interruption, skip without decoding
            imgs, ids = [], []
            for mem in mems:
                sid = sample_id(mem["json"])
                g = int(unit_interval(opts.seed, epoch, sid) * 2**62)
                torch.manual_seed(g)  # per-sample RNG: augmentation independent of position
                x = torch.from_numpy(decode(mem[o.codec], o.codec))[None]  # [1, H, W] uint8
                imgs.append(tf(x))
                ids.append(sid)
            x = torch.stack(imgs).float().div_(255.0)
            x = (x - o.mean) / o.std
            yield {"image": x, "keys": ids}


class TorchPretrainLoader:
    """Same contract as DaliPretrainLoader (``__iter__``, ``__len__``, ``state_dict``,
    ``load_state_dict``); ``opts.num_threads`` DataLoader workers."""

    def __init__(self, data: str | Path, opts: PretrainOptions, rank: int = 0, world_size: int = 1,
                 return_keys: bool = False):
        self.opts, self.rank, self.world_size, self.return_keys = opts, rank, world_size, return_keys
        self.workers = max(1, opts.num_threads)
        ss = shard_set(data, opts.split, world_size, self.workers)
        self.mean, self.std, self.codec = ss.manifest.mean, ss.manifest.std, ss.manifest.codec
        self.paths = [str(p) for p in ss.paths]
        incomplete = incomplete_samples(ss.index_paths, (self.codec, "json"))
        if incomplete and not opts.skip_corrupt:
            shown = ", ".join(f"{s}:{k}" for s, k in incomplete[:5])
            raise ShardSetError(f"{len(incomplete)} sample(s) miss a member (need {self.codec} and json): "
                                f"{shown}; rebuild the shards or set skip_corrupt")
        lost = {}
        for s, _ in incomplete:
            lost[s] = lost.get(s, 0) + 1
        self.incomplete = incomplete
        self._samples = {str(p): s.samples - lost.get(p.name, 0)
                         for p, s in zip(ss.paths, ss.manifest.shard_infos(opts.split))}
        self.epoch, self.batch_in_epoch = 0, 0

    def _per_worker(self, epoch: int) -> list[int]:
        order = _epoch_shards(self.paths, self.opts.seed, epoch)
        nw = self.workers
        out = []
        for w in range(nw):
            mine = order[self.rank * nw + w :: self.world_size * nw]
            out.append(sum(self._samples[s] for s in mine) // self.opts.batch_size)
        return out

    def __len__(self) -> int:
        # the shard-to-worker split changes per epoch; report the smallest (what an epoch yields)
        return sum(self._per_worker(self.epoch))

    def __iter__(self):
        per = self._per_worker(self.epoch)
        # DataLoader takes batches from workers round-robin, skipping exhausted ones: replay that
        # schedule to know how many batches each worker has already delivered.
        done, left, k = [0] * len(per), self.batch_in_epoch, 0
        while left > 0:
            w = k % len(per)
            if done[w] < per[w]:
                done[w] += 1
                left -= 1
            k += 1
        self._iter_epoch, self._iter_skip_per_worker, self._batches_per_worker = self.epoch, done, per
        dl = DataLoader(_RankWorkerStream(self), batch_size=None, num_workers=self.workers,
                        persistent_workers=False, prefetch_factor=2, in_order=True)
        for batch in dl:
            if not self.return_keys:
                batch.pop("keys")
            if self.opts.in_chans == 3:
                batch["image"] = batch["image"].expand(-1, 3, -1, -1)
            self.batch_in_epoch += 1
            yield batch
        self.epoch += 1
        self.batch_in_epoch = 0

    def state_dict(self) -> dict:
        return {"kind": "torch", "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "torch":
            raise ValueError(f"loader state is from a {state.get('kind')!r} loader, not torch")
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
