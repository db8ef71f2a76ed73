"""The manifest: the single source of truth of a shard directory (design §1).

Reading: :class:`Manifest`, the sharder's public API for the other parts (``dali_pipes``,
``trainer``): they never glob for tars, they ask the manifest.
Writing: :func:`account` (every input and frame of a build accounted for, per dataset and in
total) and :func:`new_manifest`, called by ``usf-shard build`` once its shards are written.
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import BuildConfig

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


# ----------------------------------------------------------------------------- writing (the build)
_TOTALS = ("inputs", "inputs_used", "inputs_unaccounted", "frames", "written", "duplicates", "rejected",
           "rejected_inputs")


def account(cfg: BuildConfig, inputs: Iterable[tuple[int, int, str]], used: set[int],
            counts: Mapping[str, Counter], rejects: list[dict], gate_records: Iterable[dict],
            missing: list[str]) -> tuple[dict, dict]:
    """(per-dataset figures, totals) of a build: every input is used (a frame written or
    deduplicated), reported in rejects.jsonl, or counted ``inputs_unaccounted`` (a bug).

    inputs: (input index, dataset index, path relative to the dataset root) of every planned
    input. used: indices of the inputs with a frame written or deduplicated. counts: per dataset,
    frames ``written`` and ``duplicates``. rejects: the rows of rejects.jsonl (``scope`` "frame"
    or "input"). gate_records: the text gate's counts per input (``dataset``, ``checked``,
    ``found``, ``cleaned``, ``ms``). missing: datasets whose root is missing.
    """
    reported = {(r["dataset"], r["path"]) for r in rejects}
    inputs_per_ds: Counter = Counter()
    inputs_used: Counter = Counter()
    rejected_inputs: Counter = Counter()
    unaccounted: Counter = Counter()
    for i, d, rel in inputs:
        name = cfg.datasets[d].name
        inputs_per_ds[name] += 1
        if i in used:
            inputs_used[name] += 1
        elif (name, rel) in reported:
            rejected_inputs[name] += 1
        else:
            unaccounted[name] += 1
    rejected_frames: Counter = Counter()
    reasons: dict[str, Counter] = defaultdict(Counter)
    for r in rejects:
        reasons[r["dataset"]][r["reason"]] += 1
        if r["scope"] == "frame":
            rejected_frames[r["dataset"]] += 1
    gate: dict[str, Counter] = defaultdict(Counter)
    gate_ms: dict[str, float] = defaultdict(float)
    for g in gate_records:
        gate[g["dataset"]].update({k: g[k] for k in ("checked", "found", "cleaned")})
        gate_ms[g["dataset"]] += g["ms"]
    datasets = {}
    for spec in cfg.datasets:
        c = counts.get(spec.name, Counter())
        datasets[spec.name] = {
            "anatomy": spec.anatomy, "holdout": spec.holdout, "missing_root": spec.name in missing,
            "inputs": inputs_per_ds[spec.name], "inputs_used": inputs_used[spec.name],
            "inputs_unaccounted": unaccounted[spec.name],
            "frames": c["written"] + c["duplicates"] + rejected_frames[spec.name],
            "written": c["written"], "duplicates": c["duplicates"],
            "rejected": rejected_frames[spec.name], "rejected_inputs": rejected_inputs[spec.name],
            "rejected_by_reason": dict(sorted(reasons[spec.name].items())),
            "text_gate": _gate_summary(spec.text_policy or cfg.text_policy, gate[spec.name], gate_ms[spec.name],
                                       reasons[spec.name]["text_found"]),
        }
    totals = {k: sum(d[k] for d in datasets.values()) for k in _TOTALS}
    totals["rejected_by_reason"] = dict(sorted(sum(reasons.values(), Counter()).items()))
    totals["text_gate"] = _gate_summary("per dataset", sum(gate.values(), Counter()), sum(gate_ms.values()),
                                        totals["rejected_by_reason"].get("text_found", 0))
    return datasets, totals


def _gate_summary(policy: str, c: Counter, ms: float, rejected: int) -> dict:
    """Text-gate figures of one dataset (or all): frames checked, with text found, cleaned,
    rejected (reason text_found), and the detector's mean cost per checked frame (machine-
    dependent: the benchmark's figure is the one to compare)."""
    n = c["checked"]
    return {"policy": policy, "checked": n, "found": c["found"], "cleaned": c["cleaned"],
            "rejected": rejected, "ms_per_frame": round(ms / n, 2) if n else None}


def new_manifest(cfg: BuildConfig, tool: str, shards: list[dict], datasets: dict, totals: dict,
                 pixel_sums: tuple[float, float, float]) -> dict:
    """The manifest.json of a build. shards: name, split, samples, bytes, sha256 of each tar;
    datasets, totals: :func:`account`'s; pixel_sums: (sum, sum of squares, count) of the written
    pretraining pixels on a 0..1 scale, which give the normalisation's mean and std."""
    s, ss, n = pixel_sums
    mean = s / n if n else 0.0
    std = math.sqrt(max(ss / n - mean * mean, 0.0)) if n else 1.0
    return {"format": FORMAT, "version": VERSION, "tool": tool, "config": cfg.resolved(),
            "codec": cfg.codec, "size_policy": {"short_side": cfg.short_side},
            "pixel_stats": {"mean": round(float(mean), 6), "std": round(float(std), 6)},
            "shards": shards, "datasets": datasets, "totals": totals}


def accounting_line(t: dict) -> str:
    """One line of a build's totals (the CLI's summary)."""
    by = ", ".join(f"{k} {v}" for k, v in t.get("rejected_by_reason", {}).items()) or "none"
    return (f"inputs {t['inputs']}, frames {t['frames']}, written {t['written']}, duplicates "
            f"{t['duplicates']}, rejected frames {t['rejected']}, rejected inputs "
            f"{t['rejected_inputs']} (reasons: {by})")
