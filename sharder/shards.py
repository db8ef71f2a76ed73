"""Writing and reading webdataset tar shards, and their DALI index files.

Tars are written reproducibly (fixed mtime/uid/gid/mode, members in the given order), so the same
samples always give the same bytes and sha256: a resumed build equals an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

IDX_VERSION = "v1.2"  # DALI webdataset index format (see DALI's wds2idx)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = 0
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def write_shard(path: Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> dict:
    """Writes ``samples`` ((key, {ext: bytes}) in order) to ``path`` atomically: a temporary
    name first, renamed when complete, so a killed build never leaves a half shard under the
    final name. Then writes ``<path>.idx``. Returns {"samples", "bytes", "sha256"}."""
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in samples:
                for ext in sorted(members):  # stable member order inside a sample
                    data = members[ext]
                    tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
                n += 1
        f.flush()
        os.fsync(f.fileno())
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    write_index(path)
    return {"samples": n, "bytes": path.stat().st_size, "sha256": digest}


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def tar_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, data offset, size) of each regular member, in tar order; streams the headers only."""
    with tarfile.open(path, mode="r:") as tar:
        for m in tar:
            if m.isreg():
                yield m.name, m.offset_data, m.size


def write_index(tar_path: Path) -> Path:
    """DALI's webdataset index (``<tar>.idx``): a header line ``v1.2 <samples>`` then one line
    per sample listing ``ext offset size name`` for each member. Written atomically too."""
    groups: list[list[str]] = []
    last = None
    for name, off, size in tar_members(tar_path):
        base, _, ext = name.partition(".")
        entry = f"{ext} {off} {size} {name}"
        if base != last:
            groups.append([entry])
            last = base
        else:
            groups[-1].append(entry)
    idx = Path(f"{tar_path}.idx")
    tmp = idx.with_name(f".{idx.name}.tmp")
    tmp.write_text(f"{IDX_VERSION} {len(groups)}\n" + "".join(" ".join(g) + "\n" for g in groups))
    os.replace(tmp, idx)
    return idx


def iter_shard(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yields (key, {ext: bytes}) per sample of a shard, in order. Raises tarfile.ReadError /
    ValueError naming the shard for truncated or malformed tars."""
    key, members = None, {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                if not m.isreg():
                    continue
                base, _, ext = m.name.partition(".")
                if key is not None and base != key:
                    yield key, members
                    members = {}
                key = base
                fobj = tar.extractfile(m)
                data = fobj.read() if fobj else b""
                if len(data) != m.size:
                    raise ValueError(f"{path.name}: member {m.name} is truncated")
                members[ext] = data
    except tarfile.ReadError as e:
        raise ValueError(f"{path.name}: not a readable tar ({e})") from None
    if key is not None:
        yield key, members

