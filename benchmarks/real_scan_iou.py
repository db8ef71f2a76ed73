"""Crop quality on real scanner files: IoU of the sharder's crop against hand-labelled boxes.

    python benchmarks/real_scan_iou.py [--json benchmarks/results/real_scan_iou.json] [--sheet PNG]

The labels are tests/fixtures/real_scan_boxes.json (every distinct real ultrasound image in
deid-data, pydicom-data and pydicom's test files; see its "about"). Frame 0 of each file is read
and cropped exactly as ``usf-shard build`` does (sharder.frame_step.frame_crops); each labelled box
is matched with the crop of highest IoU. Files whose package is not installed are listed as
missing. ``--sheet`` writes a contact sheet: each file with its label (green) and crop (red).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures" / "real_scan_boxes.json"


def locate(entry: dict, tmp: Path) -> Path | None:
    """Path of a fixture file inside its installed package (zip members extracted to tmp)."""
    spec = importlib.util.find_spec(entry["package"])
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations)))
    if "zip" in entry:
        out = tmp / entry["member"]
        if not out.exists():
            with zipfile.ZipFile(base / entry["zip"]) as z, open(out, "wb") as f:
                f.write(z.read(entry["member"]))
        return out
    p = base / entry["path"]
    return p if p.is_file() else None


def iou(a, b) -> float:
    iy = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ix = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iy * ix
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def measure(tmp: Path) -> tuple[list[dict], list]:
    from sharder.curate import CurateOptions
    from sharder.frame_step import frame_crops
    from sharder.frames import Frame, InputRejected, ReaderOptions
    from sharder.readers import iter_frames

    rows, tiles = [], []
    for e in json.loads(FIXTURES.read_text())["files"]:
        path = locate(e, tmp)
        if path is None:
            rows.append({"id": e["id"], "missing": True})
            continue
        frame = next(iter_frames(path, "dicom", ReaderOptions(max_frames=1)))
        try:
            crops = frame_crops(frame, CurateOptions())
        except InputRejected as err:
            rows.append({"id": e["id"], "rejected": err.reason, "iou": [0.0] * len(e["boxes"])})
            continue
        got = [tuple(c.crop) for _, c in crops]
        best = [max(iou(lab, g) for g in got) for lab in e["boxes"]]
        # the same frame with its scanner regions withheld: what pixel detection alone achieves
        # (a PNG export or screen recording of the same screen has no header to help)
        try:
            bare = [tuple(c.crop) for _, c in frame_crops(Frame(frame.pixels), CurateOptions())]
            bare_iou = [round(max(iou(lab, g) for g in bare), 3) for lab in e["boxes"]]
        except InputRejected as err:
            bare_iou = err.reason
        rows.append({"id": e["id"], "label_basis": e["label_basis"], "labels": e["boxes"],
                     "crops": [list(g) for g in got], "ops": crops[0][1].ops,
                     "iou": [round(v, 3) for v in best], "min_iou": round(min(best), 3),
                     "pixels_only_iou": bare_iou})
        tiles.append((e["id"], frame.pixels, e["boxes"], got))
    return rows, tiles


def contact_sheet(tiles, out: Path, tile_w: int = 320) -> None:
    ims = []
    for name, px, labels, crops in tiles:
        img = px if px.ndim == 3 else cv2.cvtColor(px if px.dtype == np.uint8 else
                                                   cv2.normalize(px, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8),
                                                   cv2.COLOR_GRAY2RGB)
        img = np.ascontiguousarray(img[..., ::-1])  # BGR for OpenCV drawing/writing
        # this sheet is committed: everything outside the label and crop boxes (the burned-in
        # patient banners of the deid-data files among it) is blacked out before drawing
        keep = np.zeros(img.shape[:2], bool)
        for y0, x0, y1, x1 in [*labels, *crops]:
            keep[y0:y1, x0:x1] = True
        img[~keep] = 0
        for y0, x0, y1, x1 in labels:
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), 3)
        for y0, x0, y1, x1 in crops:
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 255), 2)
        s = tile_w / img.shape[1]
        img = cv2.resize(img, (tile_w, round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        cv2.putText(img, name, (5, img.shape[0] - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1)
        img = img[:240]
        ims.append(np.pad(img, ((0, 240 - img.shape[0]), (0, 4), (0, 0))))
    rows = [np.concatenate(ims[i:i + 4] + [np.zeros_like(ims[0])] * (4 - len(ims[i:i + 4])), 1)
            for i in range(0, len(ims), 4)]
    cv2.imwrite(str(out), np.concatenate(rows, 0), [cv2.IMWRITE_JPEG_QUALITY, 85])


def gate_figures(tmp: Path, workers: int = 2) -> dict:
    """Builds every installed fixture file (all frames) under each text policy (and reject with
    de-annotation); returns the manifests' text-gate figures per setting: frames checked, with
    text, cleaned, rejected, ms per checked frame, and which files lost frames to text_found."""
    from sharder.build import build
    from sharder.config import BuildConfig, DatasetSpec

    src = tmp / "src"
    src.mkdir(parents=True)
    for e in json.loads(FIXTURES.read_text())["files"]:
        p = locate(e, tmp)
        if p is not None:
            (src / f"{e['id']}.dcm").symlink_to(p)
    out = {}
    # the registry's setting for 2D sets is the last one: marks de-annotated, text rejected
    for name, policy, dean in (("reject", "reject", False), ("clean", "clean", False),
                               ("reject+deannotate", "reject", True)):
        cfg = BuildConfig(datasets=[DatasetSpec(name="real", root=str(src), text_policy=policy,
                                                deannotate=dean)],
                          val_fraction=0.0, dedup_near=False, dedup_exact=False)
        m = build(cfg, tmp / f"shards_{name}", workers=workers, progress=False)
        d = m["datasets"]["real"]
        by_file: dict[str, int] = {}
        for line in (tmp / f"shards_{name}" / "rejects.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["reason"] == "text_found":
                by_file[r["path"]] = by_file.get(r["path"], 0) + 1
        out[name] = {"frames": d["frames"], "written": d["written"], "text_gate": d["text_gate"],
                       "text_found_rejects_by_file": by_file}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=str(ROOT / "benchmarks/results/real_scan_iou.json"))
    ap.add_argument("--sheet", default=str(ROOT / "benchmarks/results/real_scan_crops.jpg"))
    ap.add_argument("--gate", default=None,
                    help="also build every file under text_policy reject and clean and write the "
                         "text-gate figures here (e.g. benchmarks/results/real_text_gate.json)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows, tiles = measure(Path(tmp))
        if args.gate:
            import platform

            gate = gate_figures(Path(tmp) / "gate")
            gate["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
            Path(args.gate).write_text(json.dumps(gate, indent=1) + "\n")
            print(json.dumps(gate, indent=1))
    for r in rows:
        print(f"{r['id']:18s} " + ("missing" if r.get("missing") else
                                   f"IoU {r['iou']}  pixels only {r.get('pixels_only_iou')}  {r.get('label_basis', '')}  "
                                   f"{r.get('ops', r.get('rejected'))}"))
    Path(args.json).write_text(json.dumps({"goal_min_iou": 0.9, "files": rows}, indent=1) + "\n")
    if args.sheet and tiles:
        contact_sheet(tiles, Path(args.sheet))


if __name__ == "__main__":
    main()
