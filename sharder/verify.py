"""``usf-shard verify DIR``: proves a shard directory is what its manifest says.

Checks: every shard's sha256, size and sample count; every sample decodes to 8-bit grayscale at
the size policy; sample metadata holds allowlisted keys only; keys are unique and well formed;
``.idx`` files agree with the tars; the accounting invariant holds per dataset and in total.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .codec import decode
from .manifest import Manifest
from .shards import file_sha256, iter_shard, tar_members

META_KEYS = {"dataset", "anatomy", "split", "group", "source", "frame", "axis", "orig_hw", "crop",
             "ops", "phash", "region"}  # region: index of the scanner image region (dual view), >= 1
KEY_RE = re.compile(r"[0-9a-f]{16}")


@dataclass
class VerifyReport:
    samples: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _check_index(tar: Path, errors: list[str]) -> None:
    idx = Path(f"{tar}.idx")
    if not idx.exists():
        errors.append(f"{tar.name}: index file missing (run `usf-shard index`)")
        return
    lines = idx.read_text().splitlines()
    head = lines[0].split() if lines else []
    members = list(tar_members(tar))
    entries = [tuple(x.split()[i:i + 4]) for x in lines[1:] for i in range(0, len(x.split()), 4)]
    want = [(n.partition(".")[2], str(o), str(s), n) for n, o, s in members]
    if len(head) != 2 or head[0] != "v1.2" or int(head[1]) != len(lines) - 1 or entries != want:
        errors.append(f"{tar.name}: index does not match the tar (rebuild with `usf-shard index`)")


def verify(root: str | Path, progress: bool = True) -> VerifyReport:
    m = Manifest.load(root)
    rep = VerifyReport()
    errs = rep.errors
    ext = m.codec
    short = m.data["size_policy"]["short_side"]
    keys: set[str] = set()
    written: dict[str, int] = {}
    bar = tqdm(total=m.data["totals"]["written"], desc="verify", unit="frame", disable=not progress)
    for info in m.shard_infos(None):
        path = m.root / info.name
        if not path.exists():
            errs.append(f"{info.name}: listed in the manifest but missing")
            continue
        if file_sha256(path) != info.sha256:
            errs.append(f"{info.name}: sha256 differs from the manifest (corrupt or modified)")
        if path.stat().st_size != info.bytes:
            errs.append(f"{info.name}: size differs from the manifest")
        _check_index(path, errs)
        n = 0
        try:
            for key, members in iter_shard(path):
                n += 1
                bar.update()
                where = f"{info.name}:{key}"
                if not KEY_RE.fullmatch(key):
                    errs.append(f"{where}: key is not 16 lowercase hex chars")
                if key in keys:
                    errs.append(f"{where}: duplicate key")
                keys.add(key)
                if set(members) != {ext, "json"}:
                    errs.append(f"{where}: members {sorted(members)}, expected {[ext, 'json']}")
                    continue
                try:
                    meta = json.loads(members["json"])
                except json.JSONDecodeError:
                    errs.append(f"{where}: json member does not parse")
                    continue
                extra = set(meta) - META_KEYS
                if extra:
                    errs.append(f"{where}: metadata keys outside the allowlist: {sorted(extra)}")
                if meta.get("split") != info.split:
                    errs.append(f"{where}: split {meta.get('split')!r} in a {info.split} shard")
                written[meta.get("dataset")] = written.get(meta.get("dataset"), 0) + 1
                try:
                    img = decode(members[ext], ext)
                    if min(img.shape) != short and min(img.shape) > short:
                        errs.append(f"{where}: short side {min(img.shape)} exceeds the policy {short}")
                except ValueError as e:
                    errs.append(f"{where}: {e}")
        except ValueError as e:
            errs.append(str(e))
        if n != info.samples:
            errs.append(f"{info.name}: {n} samples, manifest says {info.samples}")
        rep.samples += n
    bar.close()
    _check_accounting(m, written, errs)
    return rep


def _check_accounting(m: Manifest, written: dict[str, int], errs: list[str]) -> None:
    root = m.root
    rejects = [json.loads(x) for x in (root / "rejects.jsonl").read_text().splitlines() if x] \
        if (root / "rejects.jsonl").exists() else []
    dups = [json.loads(x) for x in (root / "duplicates.jsonl").read_text().splitlines() if x] \
        if (root / "duplicates.jsonl").exists() else []
    tot = {k: 0 for k in ("inputs", "frames", "written", "duplicates", "rejected")}
    for name, d in m.data["datasets"].items():
        if d["frames"] != d["written"] + d["duplicates"] + d["rejected"]:
            errs.append(f"dataset {name}: frames {d['frames']} != written + duplicates + rejected")
        if d["inputs"] != d["inputs_used"] + d["rejected_inputs"] or d.get("inputs_unaccounted"):
            errs.append(f"dataset {name}: inputs {d['inputs']} != used {d['inputs_used']} + "
                        f"rejected {d['rejected_inputs']}")
        if written.get(name, 0) != d["written"]:
            errs.append(f"dataset {name}: {written.get(name, 0)} samples in shards, manifest says {d['written']}")
        nd = sum(1 for r in dups if r["dataset"] == name)
        if nd != d["duplicates"]:
            errs.append(f"dataset {name}: {nd} lines in duplicates.jsonl, manifest says {d['duplicates']}")
        nr = sum(1 for r in rejects if r["dataset"] == name and r.get("scope") == "frame")
        if nr != d["rejected"]:
            errs.append(f"dataset {name}: {nr} frame rejects in rejects.jsonl, manifest says {d['rejected']}")
        for k in tot:
            tot[k] += d[k]
    for k, v in tot.items():
        if m.data["totals"][k] != v:
            errs.append(f"totals.{k} {m.data['totals'][k]} != sum over datasets {v}")
    if sum(s["samples"] for s in m.data["shards"]) != m.data["totals"]["written"]:
        errs.append("shard sample counts do not add up to totals.written")
