"""Synthetic downstream data sets laid out exactly as distributed, and a fake encoder export.

Images are phantom-like B-mode frames: Rayleigh speckle with depth attenuation, plus a lesion
whose look depends on the label — class 0 a smooth round dark disc with posterior enhancement
(cyst-like), class 1 an irregular, spiculated dark blob casting an acoustic shadow. For more
classes the lesion size and echo level vary with the label as well.

Used by tests/test_downstream.py, tests/test_finetune.py, tests/test_dali_finetune.py and
tests/test_finetune_ddp.py (not a test module itself).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core box: one intra-op thread is many times faster than two
    contending ones. Restored afterwards so other test modules keep their setting. A test
    module turns it on by importing it."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------- phantom frames

def speckle(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 speckle background on 0..255 with depth attenuation."""
    s = rng.rayleigh(1.0, size=(h, w)).astype(np.float32)
    s = cv2.GaussianBlur(s, (0, 0), 0.8)
    depth = np.linspace(1.0, 0.55, h, dtype=np.float32)[:, None]  # deeper = darker
    return np.clip(s / s.mean() * 105.0 * depth, 0, 255)


def lesion_image(rng: np.random.Generator, label: int, h: int = 64, w: int = 72) -> np.ndarray:
    """(h, w) uint8 frame with a lesion of class ``label``."""
    img = speckle(rng, h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.35, 0.55) * h, rng.uniform(0.35, 0.65) * w
    r0 = (0.14 + 0.05 * ((label // 2) % 4)) * min(h, w)
    ang = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(yy - cy, xx - cx)
    if label % 2 == 0:  # smooth disc
        radius = r0
    else:  # irregular, spiculated margin
        radius = r0 * (1 + 0.25 * np.sin(5 * ang + rng.uniform(0, 6)) + 0.12 * np.sin(11 * ang))
    inside = dist < radius
    level = 0.15 + 0.1 * (label // 4)
    img[inside] *= level
    below = (yy > cy) & (np.abs(xx - cx) < r0 * 0.8) & ~inside
    img[below] *= 1.35 if label % 2 == 0 else 0.35  # enhancement vs shadow
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")


# ---------------------------------------------------------------------------- BUS-BRA

def make_busbra(root: Path, n_cases: int = 20, seed: int = 0, h: int = 48, w: int = 56) -> dict:
    """``root/BUSBRA/{Images/bus_XXXX-{l,r,s}.png, bus_data.csv, 5-fold-cv.csv, 10-fold-cv.csv}``.

    Several IDs share a Case (1-3 images per patient); ID numbers run independently of the
    Case so only the Case column reveals the patient. Folds are assigned per Case. Returns the
    ground truth: ``dir``, ``ids``, ``label``/``case``/``fold5``/``fold10`` dicts keyed by ID."""
    rng = np.random.default_rng(seed)
    d = root / "BUSBRA"
    (d / "Masks").mkdir(parents=True, exist_ok=True)
    cases = list(range(1, n_cases + 1))
    case_label = {c: int(i % 3 == 0) for i, c in enumerate(cases)}  # about a third malignant
    order = rng.permutation(cases)
    fold5 = {int(c): 1 + i % 5 for i, c in enumerate(order)}
    fold10 = {int(c): 1 + i % 10 for i, c in enumerate(order)}
    ids, label, case, f5, f10 = [], {}, {}, {}, {}
    entries = []
    for c in cases:
        for _ in range(int(rng.integers(1, 4))):
            entries.append(c)
    rng.shuffle(entries)
    for n, c in enumerate(entries, start=1):
        rid = f"bus_{n:04d}-{'lrs'[int(rng.integers(0, 3))]}"
        ids.append(rid)
        label[rid], case[rid], f5[rid], f10[rid] = case_label[c], c, fold5[c], fold10[c]
        _write(d / "Images" / f"{rid}.png", lesion_image(rng, case_label[c], h, w))
    with (d / "bus_data.csv").open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height", "Side", "BBOX"])
        for rid in ids:
            path = "malignant" if label[rid] else "benign"
            wr.writerow([rid, case[rid], "carcinoma" if label[rid] else "fibroadenoma", path,
                         5 if label[rid] else 3, "phantom", w, h, {"l": "left", "r": "right", "s": "not informed"}[rid[-1]],
                         "[10, 12, 20, 18]"])
    for k, folds in ((5, f5), (10, f10)):
        with (d / f"{k}-fold-cv.csv").open("w", newline="") as fh:
            wr = csv.writer(fh)
            wr.writerow(["ID", "Case", "Pathology", "kFold"])
            for rid in ids:
                wr.writerow([rid, case[rid], "malignant" if label[rid] else "benign", folds[rid]])
    return {"dir": d, "ids": ids, "label": label, "case": case, "fold5": f5, "fold10": f10}


# ---------------------------------------------------------------------------- MMOTU-2D

def make_mmotu(root: Path, n_train: int = 24, n_val: int = 16, seed: int = 1, h: int = 48, w: int = 64) -> dict:
    """``root/OTU_2d/{images/<n>.JPG, annotations/<n>.PNG, train_cls.txt, val_cls.txt, train.txt, val.txt}``.

    Labels cycle through the 8 classes; the lists use the exact ``<n>.JPG <label>`` format.
    Returns ``dir`` and ``train``/``val`` lists of (file name, label)."""
    rng = np.random.default_rng(seed)
    d = root / "OTU_2d"
    names = [f"{i}.JPG" for i in rng.permutation(np.arange(1, n_train + n_val + 1))]
    items = [(n, i % 8) for i, n in enumerate(names)]
    train, val = items[:n_train], items[n_train:]
    for name, lab in items:
        _write(d / "images" / name, lesion_image(rng, lab, h, w))
        _write(d / "annotations" / name.replace(".JPG", ".PNG"), np.zeros((h, w), np.uint8))
    (d / "train_cls.txt").write_text("".join(f"{n} {lab}\n" for n, lab in train))
    (d / "val_cls.txt").write_text("".join(f"{n}  {lab}\n" for n, lab in val))  # double space: still valid
    (d / "train.txt").write_text("".join(n.replace(".JPG", "") + "\n" for n, _ in train))
    (d / "val.txt").write_text("".join(n.replace(".JPG", "") + "\n" for n, _ in val))
    return {"dir": d, "train": train, "val": val}


# ---------------------------------------------------------------------------- GIST514-DB

def make_gist(root: Path, n: int = 30, seed: int = 2, splits: int = 5) -> dict:
    """``root/usd514_jpeg_roi/{images/*.jpg, annotations/{train,val}_anno_crop_split_{k}.json}``
    with real COCO structure (images / annotations / categories lmym=1, gist=2). Split k holds
    out every image with index % splits == k. Returns ``dir``, ``label`` (file -> 0/1) and
    ``val`` (k -> file names)."""
    rng = np.random.default_rng(seed)
    d = root / "usd514_jpeg_roi"
    files, label = [], {}
    for i in range(n):
        h, w = int(rng.integers(40, 60)), int(rng.integers(40, 60))  # ROI crops vary in size
        lab = int(i % 2)
        f = f"{1000 + i}.jpg"
        _write(d / "images" / f, lesion_image(rng, lab, h, w))
        files.append((i + 1, f, h, w))
        label[f] = lab
    cats = [{"supercategory": "tumor", "id": 1, "name": "lmym"}, {"supercategory": "tumor", "id": 2, "name": "gist"}]
    val = {}
    for k in range(splits):
        for side in ("train", "val"):
            chosen = [x for j, x in enumerate(files) if (j % splits == k) == (side == "val")]
            coco = {
                "info": {"description": "synthetic GIST514-DB"}, "licenses": [],
                "images": [{"id": iid, "file_name": f, "height": h, "width": w} for iid, f, h, w in chosen],
                "annotations": [{"id": 10 * iid, "image_id": iid, "category_id": 1 + label[f],
                                 "bbox": [2, 2, w - 4, h - 4], "area": float((w - 4) * (h - 4)), "iscrowd": 0,
                                 "segmentation": [[2, 2, w - 2, 2, w - 2, h - 2, 2, h - 2]]}
                                for iid, f, h, w in chosen],
                "categories": cats,
            }
            p = d / "annotations" / f"{side}_anno_crop_split_{k}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(coco))
            if side == "val":
                val[k] = sorted(f for _, f, _, _ in chosen)
    return {"dir": d, "label": label, "val": val}


# ---------------------------------------------------------------------------- generic folder

def make_folder(root: Path, per_class: int = 10, seed: int = 3, classes: tuple[str, ...] = ("cyst", "solid")) -> dict:
    """``root/<class>/*.png`` plus ``root/labels.csv`` (path,label,group) where two images share
    each group. Returns ``dir`` and ``csv``."""
    rng = np.random.default_rng(seed)
    rows = []
    for ci, c in enumerate(classes):
        for i in range(per_class):
            p = root / c / f"{c}_{i:03d}.png"
            _write(p, lesion_image(rng, ci, 40, 48))
            rows.append((p.relative_to(root).as_posix(), c, f"pt{ci}_{i // 2}"))
    csv_path = root / "labels.csv"
    with csv_path.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["path", "label", "group"])
        wr.writerows(rows)
    return {"dir": root, "csv": csv_path, "rows": rows}


# ---------------------------------------------------------------------------- encoder export

def make_export(out: Path, img_size: int = 32, patch_size: int = 8, in_chans: int = 1, depth: int = 2,
                seed: int = 0, mean: float = 0.3, std: float = 0.2) -> Path:
    """An export dir as design §3 specifies: a tiny timm ViT (num_classes=0: class token, final
    ``norm.*``, no head) saved with safetensors, plus config.json."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=in_chans,
                          img_size=img_size, patch_size=patch_size, depth=depth)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(out / "model.safetensors"))
    cfg = {"timm_name": "vit_tiny_patch16_224", "img_size": img_size, "patch_size": patch_size, "in_chans": in_chans,
           "embed_dim": 192, "depth": depth, "num_heads": 3, "mean": mean, "std": std}
    (out / "config.json").write_text(json.dumps(cfg))
    return out
