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


def incomplete_samples(index_paths: list[Path], exts: tuple[str, ...]) -> list[tuple[str, str]]:
    """(shard name, key) of every sample whose index line lacks one of ``exts`` (a member lost
    when the tar was made or edited). Reads only the small ``.idx`` files."""
    bad = []
    for idx in index_paths:
        with open(idx) as f:
            next(f, None)
            for line in f:
                tok = line.split()
                have = {tok[i] for i in range(0, len(tok), 4)}
                if not set(exts) <= have:
                    key = tok[3].partition(".")[0] if len(tok) >= 4 else "?"
                    bad.append((Path(str(idx)[: -len(".idx")]).name, key))
    return bad


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
