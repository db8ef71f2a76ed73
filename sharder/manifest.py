"""The manifest: the single source of truth of a shard directory (design §1).

This small reader is the sharder's public API for the other parts (``dali_pipes``, ``trainer``):
they never glob for tars, they ask the manifest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = "usf-shards"
VERSION = 1
SPLITS = ("train", "val", "holdout")


class ManifestError(ValueError):
    pass


@dataclass
class ShardInfo:
    name: str
    split: str
    samples: int
    bytes: int
    sha256: str


class Manifest:
    """Read-only view of ``<dir>/manifest.json``."""

    def __init__(self, root: Path, data: dict):
        self.root = Path(root)
        self.data = data

    @classmethod
    def load(cls, root: str | Path) -> "Manifest":
        root = Path(root)
        path = root / "manifest.json" if root.is_dir() else root
        if not path.is_file():
            raise ManifestError(f"no manifest.json in {root} (is this a `usf-shard build` output?)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: not valid JSON ({e})") from None
        if data.get("format") != FORMAT:
            raise ManifestError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("version") != VERSION:
            raise ManifestError(f"{path}: version {data.get('version')} is not supported ({VERSION})")
        return cls(path.parent, data)

    @property
    def codec(self) -> str:
        return self.data["codec"]

    @property
    def mean(self) -> float:
        return float(self.data["pixel_stats"]["mean"])

    @property
    def std(self) -> float:
        return float(self.data["pixel_stats"]["std"])

    def shard_infos(self, split: str | None = "train") -> list[ShardInfo]:
        return [ShardInfo(**s) for s in self.data["shards"] if split is None or s["split"] == split]

    def shards(self, split: str | None = "train") -> list[Path]:
        """Paths of the split's tars, in manifest order."""
        return [self.root / s.name for s in self.shard_infos(split)]

    def index_files(self, split: str | None = "train") -> list[Path]:
        return [Path(f"{p}.idx") for p in self.shards(split)]

    def num_samples(self, split: str | None = "train") -> int:
        return sum(s.samples for s in self.shard_infos(split))
