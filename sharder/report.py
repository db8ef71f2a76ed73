"""Human-facing views of a shard directory: the stats table and the contact-sheet preview."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from .codec import decode
from .manifest import Manifest
from .shards import iter_shard


def stats_table(root: str | Path) -> str:
    """Per-dataset and per-anatomy counts as a fixed-width table."""
    m = Manifest.load(root)
    cols = ("inputs", "frames", "written", "duplicates", "rejected", "rejected_inputs")
    rows = [("dataset", "anatomy", *cols)]
    by_anat: dict[str, Counter] = {}
    for name, d in sorted(m.data["datasets"].items()):
        tag = d["anatomy"] + (" (holdout)" if d.get("holdout") else "")
        rows.append((name, tag, *(str(d[c]) for c in cols)))
        by_anat.setdefault(d["anatomy"], Counter()).update({c: d[c] for c in cols})
    rows.append(("TOTAL", "", *(str(m.data["totals"][c]) for c in cols)))
    rows.append(("", "", *("" for _ in cols)))
    rows.append(("anatomy", "", *cols))
    for a, c in sorted(by_anat.items()):
        rows.append((a, "", *(str(c[k]) for k in cols)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    splits = Counter()
    for s in m.data["shards"]:
        splits[s["split"]] += s["samples"]
    lines.append("")
    lines.append("splits: " + ", ".join(f"{k} {v} samples" for k, v in sorted(splits.items())))
    lines.append(f"pixel mean {m.mean:.4f} std {m.std:.4f}, codec {m.codec}, "
                 f"{len(m.data['shards'])} shards")
    for name, d in sorted(m.data["datasets"].items()):
        g = d.get("text_gate")  # manifests from before the text gate have none
        if g and g["policy"] != "off":
            ms = "n/a" if g["ms_per_frame"] is None else f"{g['ms_per_frame']:.0f} ms/frame"
            lines.append(f"text gate {name} ({g['policy']}): {g['checked']} frames checked, "
                         f"{g['found']} with text, {g['cleaned']} cleaned, {g['rejected']} rejected, {ms}")
    return "\n".join(lines)


def contact_sheet(root: str | Path, out: str | Path, n: int = 48, seed: int = 0, tile: int = 128,
                  split: str | None = None) -> Path:
    """Writes a PNG grid of ``n`` samples drawn at random (reservoir sampling, one pass) from
    the shards, each tile labelled with its dataset; names nothing but dataset and anatomy."""
    m = Manifest.load(root)
    rng = random.Random(seed)
    picked: list[tuple[np.ndarray, str]] = []
    seen = 0
    for path in m.shards(split):
        for key, mem in iter_shard(path):
            seen += 1
            j = len(picked) if len(picked) < n else rng.randrange(seen)
            if j < n:
                import json

                meta = json.loads(mem["json"])
                item = (mem[m.codec], f"{meta['dataset']}")
                if j == len(picked):
                    picked.append(item)
                else:
                    picked[j] = item
    cols = max(1, int(np.ceil(np.sqrt(max(len(picked), 1) * 4 / 3))))
    rows = max(1, int(np.ceil(len(picked) / cols)))
    sheet = np.zeros((rows * (tile + 14), cols * tile), np.uint8)
    for k, (data, label) in enumerate(picked):
        img = decode(data, m.codec)
        img = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        r, c = divmod(k, cols)
        y, x = r * (tile + 14), c * tile
        sheet[y:y + tile, x:x + tile] = img
        cv2.putText(sheet, label[:20], (x + 2, y + tile + 11), cv2.FONT_HERSHEY_PLAIN, 0.8, 255, 1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet)
    return out


def curation_sheet(inputs: list[str | Path], out: str | Path, n: int = 8, seed: int = 0, tile: int = 256) -> Path:
    """Before/after curation for ``n`` raw inputs: the source frame with the scan-region crop
    drawn on it, beside the curated frame. LOCAL USE ONLY: the 'before' side shows the raw frame,
    burned-in banners included, so this sheet is not shareable (unlike the contact sheet)."""
    from .config import quick_datasets
    from .curate import CurateOptions, curate
    from .frames import InputRejected, ReaderOptions
    from .intensity import gray_u8
    from .readers import detect_format, iter_frames

    files = sorted(p for spec in quick_datasets(list(inputs)) for p in Path(spec.root).rglob("*") if p.is_file())
    random.Random(seed).shuffle(files)
    rows = []
    for f in files:
        if len(rows) == n:
            break
        fmt = detect_format(f)
        if fmt is None:
            continue
        try:
            frame = next(iter_frames(f, fmt, ReaderOptions(max_frames=1)))
            cur = curate(frame.pixels, CurateOptions())
        except (InputRejected, StopIteration):
            continue
        gray = gray_u8(frame.pixels)[0]
        before = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
        y0, x0, y1, x1 = cur.crop
        cv2.rectangle(before, (x0, y0), (x1 - 1, y1 - 1), (0, 200, 255), max(2, gray.shape[0] // 150))
        def fit(img):
            s = tile / max(img.shape[:2])
            img = cv2.resize(img, (max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s))),
                             interpolation=cv2.INTER_AREA)
            pad = np.zeros((tile, tile, 3), np.uint8)
            pad[:img.shape[0], :img.shape[1]] = img if img.ndim == 3 else img[..., None]
            return pad
        rows.append(np.concatenate([fit(before), fit(cv2.cvtColor(cur.image, cv2.COLOR_GRAY2BGR))], axis=1))
    sheet = np.concatenate(rows, axis=0) if rows else np.zeros((tile, 2 * tile, 3), np.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), sheet)
    return out
