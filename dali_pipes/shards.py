"""Which shards a rank reads, with the checks that turn misconfiguration into an error at start
(never a hang): too few shards for the ranks, missing or truncated tars, missing indices."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sharder.manifest import Manifest


class ShardSetError(RuntimeError):
    pass


@dataclass
class ShardSet:
    manifest: Manifest
    paths: list[Path]
    index_paths: list[Path]
    samples: int  # samples in the whole split (all ranks)


def check_tar(path: Path, idx: Path) -> None:
    """Cheap integrity check from the index: a tar shorter than its last member is truncated."""
    if not path.exists():
        raise ShardSetError(f"shard {path.name} is listed in the manifest but missing")
    if not idx.exists():
        raise ShardSetError(f"shard {path.name} has no index {idx.name}: run `usf-shard index {path.parent}`")
    lines = idx.read_text().split("\n")
    last = lines[-2].split() if len(lines) >= 2 else []
    if len(last) >= 4:
        end = max(int(last[i + 1]) + int(last[i + 2]) for i in range(0, len(last), 4))
        if path.stat().st_size < end:
            raise ShardSetError(f"shard {path.name} is truncated ({path.stat().st_size} bytes, index "
                                f"needs {end}); rebuild or verify it with `usf-shard verify`")


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's members lie: shard number (position in the split's shard list) and
    ``{ext: (byte offset, size)}`` of each member's data inside that tar."""

    shard: int
    members: dict[str, tuple[int, int]]


def sample_index(index_paths: list[Path], exts: tuple[str, ...]) -> tuple[list[SampleRef], list[tuple[str, str]]]:
    """Reads the small ``.idx`` files of a split (DALI's webdataset index: per sample, groups of
    ``ext offset size name``) into the complete samples in shard order, and (shard name, key) of
    every sample that lacks one of ``exts`` (a member lost when the tar was made or edited).
    The offsets give random access to any sample without parsing the tars."""
    refs, bad = [], []
    for si, idx in enumerate(index_paths):
        with open(idx) as f:
            next(f, None)
            for line in f:
                tok = line.split()
                mem = {tok[i]: (int(tok[i + 1]), int(tok[i + 2])) for i in range(0, len(tok) - 3, 4)}
                if set(exts) <= set(mem):
                    refs.append(SampleRef(si, {e: mem[e] for e in exts}))
                else:
                    key = tok[3].partition(".")[0] if len(tok) >= 4 else "?"
                    bad.append((Path(str(idx)[: -len(".idx")]).name, key))
    return refs, bad


def incomplete_samples(index_paths: list[Path], exts: tuple[str, ...]) -> list[tuple[str, str]]:
    """(shard name, key) of every sample whose index line lacks one of ``exts``."""
    return sample_index(index_paths, exts)[1]


def shown(incomplete: list[tuple[str, str]]) -> str:
    """The first few incomplete samples as ``shard:key, ...`` (for errors and warnings)."""
    return ", ".join(f"{s}:{k}" for s, k in incomplete[:5])


def check_complete(incomplete: list[tuple[str, str]], exts: tuple[str, ...], skip_corrupt: bool) -> None:
    """An error at start naming the samples that miss one of ``exts``, unless ``skip_corrupt``
    (the loader then skips and counts them)."""
    if incomplete and not skip_corrupt:
        raise ShardSetError(f"{len(incomplete)} sample(s) miss a member (need {' and '.join(exts)}): "
                            f"{shown(incomplete)}; rebuild the shards (usf-shard verify names them) or set "
                            f"skip_corrupt")


def shard_set(data: str | Path, split: str, world_size: int, readers_per_rank: int = 1) -> ShardSet:
    m = Manifest.load(data)
    paths = m.shards(split)
    need = world_size * readers_per_rank
    if len(paths) < need:
        raise ShardSetError(
            f"{len(paths)} {split} shard(s) in {m.root} but {world_size} rank(s) x {readers_per_rank} "
            f"reader(s) = {need} are needed: rebuild with smaller shards (shard_max_samples) or use "
            f"fewer ranks/workers")
    idx = m.index_files(split)
    for p, i in zip(paths, idx):
        check_tar(p, i)
    return ShardSet(m, paths, idx, m.num_samples(split))
