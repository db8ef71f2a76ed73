"""Downstream dataset adapters and their official splits.

Each adapter reads a data set exactly as it is distributed and returns :class:`Record`s
(image path, class index, patient/group id) plus the class names; :func:`load_task` wraps them
into the train/test :class:`Split`s the paper evaluates on. No pixels are read here.

Layouts (``--data-root`` may be the folder a user unzipped, or the data set folder inside it;
the adapters search up to three levels down for the marker files):

- ``busbra`` (BUS-BRA)::

      BUSBRA/Images/bus_0001-l.png ...
      BUSBRA/bus_data.csv       ID,Case,Histology,Pathology,BIRADS,Device,Width,Height,Side,BBOX
      BUSBRA/5-fold-cv.csv      ID,...,kFold      (also 10-fold-cv.csv; folds numbered from 1)

  Binary benign (0) / malignant (1); group = ``Case`` (patient). Default split: fold 1 is the
  test set, folds 2..k train; ``--cv`` runs every fold.

- ``mmotu2d`` (MMOTU, 2D part)::

      OTU_2d/images/1.JPG ...
      OTU_2d/train_cls.txt, OTU_2d/val_cls.txt   lines "<name>.JPG <label>"  (or next to OTU_2d/)

  Eight classes (indices as in the data set). No patient ids are published, so each image is
  its own group. One official split: train list -> train, val list -> test.

- ``gist514`` (GIST514-DB, ROI-cropped release)::

      usd514_jpeg_roi/images/*.jpg
      usd514_jpeg_roi/annotations/{train,val}_anno_crop_split_{0..4}.json   (COCO)

  Binary leiomyoma (0) / GIST (1) from the image's annotation category. Group = a patient key
  of the COCO image entry if present (``patient_id``, ``patient``, ``case_id``, ``case``), else
  the file name. Default split 0 (train json -> train, val json -> test); ``--cv`` runs all five.

- ``folder`` (generic): ``ROOT/<class>/*.png|jpg...``; or ``ROOT/train/<class>/...`` with
  ``ROOT/test/<class>/...`` (or ``val/``); or a CSV file (or ``ROOT/labels.csv``) with a header
  holding ``path,label`` and optionally ``group`` and ``split`` (train/test) columns, paths
  relative to the CSV. Without a given test set, one is carved out by group.

Every parse error is a :class:`DatasetFormatError` naming the file and line (or JSON entry).
"""
from __future__ import annotations

import csv
import json
import logging
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dali_pipes.records import Record

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetFormatError(ValueError):
    """A downstream data set tree or label file does not look as distributed."""


@dataclass
class Split:
    """Train and test records of one official split (``name``: e.g. ``fold1``, ``split0``)."""

    name: str
    train: list[Record]
    test: list[Record]


@dataclass
class TaskData:
    task: str
    class_names: list[str]
    root: Path
    splits: list[Split]


@dataclass(frozen=True)
class TaskSpec:
    """Static facts about a downstream task; ``paper`` = the USF-MAE paper's own figures."""

    name: str
    title: str
    class_names: tuple[str, ...]
    paper: dict


# The USF-MAE paper's reported figures for its own model (percent). Only F1 is recorded: the
# other metrics are not reproduced here rather than guessed.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "busbra": {"f1": 81.6},
    "mmotu2d": {"f1": 79.6},
    "gist514": {"f1": 82.4},
}

MMOTU_CLASSES = (
    "chocolate cyst", "serous cystadenoma", "teratoma", "theca cell tumour", "simple cyst",
    "normal ovary", "mucinous cystadenoma", "high-grade serous",
)

TASKS: dict[str, TaskSpec] = {
    "busbra": TaskSpec("busbra", "BUS-BRA (breast, benign vs malignant)", ("benign", "malignant"),
                       PAPER_RESULTS["busbra"]),
    "mmotu2d": TaskSpec("mmotu2d", "MMOTU-2D (ovarian tumour, 8 classes)", MMOTU_CLASSES,
                        PAPER_RESULTS["mmotu2d"]),
    "gist514": TaskSpec("gist514", "GIST514-DB (EUS, leiomyoma vs GIST)", ("leiomyoma", "GIST"),
                        PAPER_RESULTS["gist514"]),
    "folder": TaskSpec("folder", "image folder / CSV", (), {}),
}


# ---------------------------------------------------------------------------- helpers

def find_dataset_dir(root: Path, is_dataset: Callable[[Path], bool], what: str, max_depth: int = 3) -> Path:
    """The first folder at or below ``root`` (breadth first, ``max_depth`` levels) for which
    ``is_dataset`` holds — so a user may point at the unzipped folder or the data set inside."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: data root is not a directory")
    level = [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            if is_dataset(d):
                return d
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except PermissionError:
                continue
        level = nxt
    raise DatasetFormatError(f"{root}: no {what} found here or up to {max_depth} levels below")


def _read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header as (line number, row); BOM-tolerant; checks columns."""
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DatasetFormatError(f"{path}: cannot open ({e})") from e
    with fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetFormatError(f"{path}:1: header {header} lacks column(s) {missing}")
        reader.fieldnames = header
        rows = []
        for row in reader:
            if None in row:  # more cells than header columns
                raise DatasetFormatError(f"{path}:{reader.line_num}: more fields than the header has")
            if all(not (v or "").strip() for v in row.values()):
                continue  # blank line
            rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    return rows


def _casefold_index(folder: Path) -> dict[str, Path]:
    """Map lower-cased file name -> path for the files of ``folder`` (case-insensitive lookup:
    list files say ``1.JPG`` while some unzip tools lower-case names)."""
    return {p.name.lower(): p for p in folder.iterdir() if p.is_file()}


def _resolve_image(name: str, folder: Path, index: dict[str, Path]) -> Path | None:
    p = folder / name
    if p.is_file():
        return p
    hit = index.get(Path(name).name.lower())
    if hit is not None:
        return hit
    if not Path(name).suffix:  # list gives a stem only
        for ext in IMAGE_EXTS:
            hit = index.get(Path(name).name.lower() + ext)
            if hit is not None:
                return hit
    return None


def _group_check(split: Split, where: str) -> None:
    """Warn when an *official* split puts a group on both sides. The split is kept as
    distributed (numbers must stay comparable with published ones), but the leak is reported.
    (BUS-BRA cases are made fold-consistent before this; MMOTU groups are single images.)"""
    both = {r.group for r in split.train} & {r.group for r in split.test}
    if both:
        log.warning("%s: split %s puts %d group(s) on both sides, e.g. %s — kept as distributed",
                    where, split.name, len(both), sorted(both)[:5])


# ---------------------------------------------------------------------------- BUS-BRA

def _is_busbra(d: Path) -> bool:
    return (d / "bus_data.csv").is_file() and (d / "Images").is_dir()


def _bus_id(raw: str) -> str:
    """ID as a key: ``bus_0001-l`` whether written with or without ``.png``."""
    return raw[: -len(Path(raw).suffix)] if Path(raw).suffix.lower() in IMAGE_EXTS else raw


def load_busbra(root: Path, kfold: int = 5) -> tuple[list[Record], dict[Path, int], Path]:
    """All BUS-BRA records, each image's fold from ``{kfold}-fold-cv.csv`` (keyed by image
    path), and the data set dir.

    Folds are patient-wise in the official files; should a Case still span folds, its images
    are all moved to the fold holding most of them (ties: the lowest fold) with a warning, so
    no patient can be on both sides of any split."""
    d = find_dataset_dir(root, _is_busbra, "BUS-BRA folder (bus_data.csv + Images/)")
    data_csv = d / "bus_data.csv"
    images = d / "Images"
    index = _casefold_index(images)
    by_id: dict[str, Record] = {}
    first_line: dict[str, int] = {}
    for line, row in _read_csv(data_csv, ("ID", "Case", "Pathology")):
        rid, case, path = _bus_id(row["ID"]), row["Case"], row["Pathology"].lower()
        if not rid or not case:
            raise DatasetFormatError(f"{data_csv}:{line}: empty ID or Case")
        if rid in by_id:
            raise DatasetFormatError(f"{data_csv}:{line}: ID {rid} repeats line {first_line[rid]}")
        if path not in ("benign", "malignant"):
            raise DatasetFormatError(f"{data_csv}:{line}: Pathology {row['Pathology']!r} is not benign/malignant")
        img = _resolve_image(rid + ".png", images, index)
        if img is None:
            raise DatasetFormatError(f"{data_csv}:{line}: image {images / (rid + '.png')} not found")
        first_line[rid] = line
        by_id[rid] = Record(img, 0 if path == "benign" else 1, f"case:{case}")
    if not by_id:
        raise DatasetFormatError(f"{data_csv}: no rows")

    fold_csv = d / f"{kfold}-fold-cv.csv"
    folds: dict[str, int] = {}
    for line, row in _read_csv(fold_csv, ("ID", "kFold")):
        rid = _bus_id(row["ID"])
        if rid not in by_id:
            raise DatasetFormatError(f"{fold_csv}:{line}: ID {rid!r} is not in {data_csv.name}")
        if rid in folds:
            raise DatasetFormatError(f"{fold_csv}:{line}: ID {rid} listed twice")
        try:
            k = int(float(row["kFold"]))
        except ValueError:
            raise DatasetFormatError(f"{fold_csv}:{line}: kFold {row['kFold']!r} is not a number") from None
        if not 1 <= k <= kfold:
            raise DatasetFormatError(f"{fold_csv}:{line}: kFold {k} outside 1..{kfold}")
        p = row.get("Pathology", "").lower()
        if p in ("benign", "malignant") and (p == "malignant") != bool(by_id[rid].label):
            raise DatasetFormatError(f"{fold_csv}:{line}: Pathology {p} contradicts {data_csv.name}")
        folds[rid] = k
    missing = [s for s in by_id if s not in folds]
    if missing:
        raise DatasetFormatError(f"{fold_csv}: no fold for {len(missing)} ID(s), e.g. {missing[:3]}")

    # Patient-wise folds: each Case to a single fold.
    by_case: dict[str, Counter] = defaultdict(Counter)
    for rid, r in by_id.items():
        by_case[r.group][folds[rid]] += 1
    for case, cnt in by_case.items():
        if len(cnt) > 1:
            best = min(cnt.items(), key=lambda kv: (-kv[1], kv[0]))[0]
            log.warning("%s: %s spans folds %s; using fold %d for all its images", fold_csv, case, dict(cnt), best)
            for rid, r in by_id.items():
                if r.group == case:
                    folds[rid] = best
    records = list(by_id.values())
    return records, {r.path: folds[rid] for rid, r in by_id.items()}, d


# ---------------------------------------------------------------------------- MMOTU-2D

def _mmotu_lists(d: Path) -> tuple[Path, Path] | None:
    for base in (d, d.parent):
        tr, va = base / "train_cls.txt", base / "val_cls.txt"
        if tr.is_file() and va.is_file():
            return tr, va
    return None


def _is_mmotu(d: Path) -> bool:
    return (d / "images").is_dir() and _mmotu_lists(d) is not None


def _read_cls_list(path: Path, images: Path, index: dict[str, Path], k: int) -> list[Record]:
    out = []
    with path.open(encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DatasetFormatError(f"{path}:{line_no}: expected '<name> <label>', got {line.strip()!r}")
            name, lab = parts
            try:
                label = int(lab)
            except ValueError:
                raise DatasetFormatError(f"{path}:{line_no}: label {lab!r} is not an integer") from None
            if not 0 <= label < k:
                raise DatasetFormatError(f"{path}:{line_no}: label {label} outside 0..{k - 1}")
            img = _resolve_image(name, images, index)
            if img is None:
                raise DatasetFormatError(f"{path}:{line_no}: image {images / name} not found")
            out.append(Record(img, label, f"img:{img.stem}"))
    if not out:
        raise DatasetFormatError(f"{path}: no entries")
    return out


def load_mmotu(root: Path) -> tuple[list[Record], list[Record], Path]:
    """(train records, val records, data set dir) from the official classification lists."""
    d = find_dataset_dir(root, _is_mmotu, "MMOTU-2D folder (OTU_2d/images + train_cls.txt/val_cls.txt)")
    lists = _mmotu_lists(d)
    assert lists is not None
    images = d / "images"
    index = _casefold_index(images)
    k = len(MMOTU_CLASSES)
    train = _read_cls_list(lists[0], images, index, k)
    val = _read_cls_list(lists[1], images, index, k)
    both = {r.path for r in train} & {r.path for r in val}
    if both:
        raise DatasetFormatError(f"{lists[1]}: {len(both)} image(s) also in {lists[0].name}, "
                                 f"e.g. {sorted(p.name for p in both)[:3]}")
    return train, val, d


# ---------------------------------------------------------------------------- GIST514-DB

GIST_SPLITS = 5
_GIST_NAMES = {"lmym": 0, "leiomyoma": 0, "lm": 0, "gist": 1}
_GROUP_KEYS = ("patient_id", "patient", "case_id", "case")


def _is_gist(d: Path) -> bool:
    a = d / "annotations"
    return (d / "images").is_dir() and a.is_dir() and any(a.glob("train_anno_crop_split_*.json"))


def _read_coco(path: Path, images: Path, index: dict[str, Path]) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise DatasetFormatError(f"{path}: not a COCO file (needs lists 'images', 'annotations', 'categories')")
    cat_label: dict[int, int] = {}
    for i, c in enumerate(data["categories"]):
        try:
            cid, cname = int(c["id"]), str(c["name"]).strip().lower()
        except (KeyError, TypeError, ValueError):
            raise DatasetFormatError(f"{path}: categories[{i}] lacks id/name") from None
        if cname not in _GIST_NAMES:
            raise DatasetFormatError(f"{path}: categories[{i}] name {c['name']!r} is neither leiomyoma "
                                     f"(lmym) nor GIST")
        cat_label[cid] = _GIST_NAMES[cname]
    labels: dict[int, set[int]] = defaultdict(set)
    for i, a in enumerate(data["annotations"]):
        try:
            iid, cid = int(a["image_id"]), int(a["category_id"])
        except (KeyError, TypeError, ValueError):
            raise DatasetFormatError(f"{path}: annotations[{i}] lacks image_id/category_id") from None
        if cid not in cat_label:
            raise DatasetFormatError(f"{path}: annotations[{i}] category_id {cid} not in categories")
        labels[iid].add(cat_label[cid])
    out: list[Record] = []
    unlabeled = 0
    for i, im in enumerate(data["images"]):
        try:
            iid, fname = int(im["id"]), str(im["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetFormatError(f"{path}: images[{i}] lacks id/file_name") from None
        labs = labels.get(iid, set())
        if len(labs) > 1:
            raise DatasetFormatError(f"{path}: images[{i}] ({fname}) has annotations of both classes")
        if not labs:
            unlabeled += 1  # no lesion annotation: cannot be labelled, left out
            continue
        img = _resolve_image(fname, images, index)
        if img is None and (path.parent.parent / fname).is_file():
            img = path.parent.parent / fname
        if img is None:
            raise DatasetFormatError(f"{path}: images[{i}] file {fname} not found in {images}")
        gkey = next((k for k in _GROUP_KEYS if im.get(k) not in (None, "")), None)
        group = f"patient:{im[gkey]}" if gkey else f"img:{img.stem}"
        out.append(Record(img, labs.pop(), group))
    if unlabeled:
        log.warning("%s: %d image(s) without annotation left out", path, unlabeled)
    if not out:
        raise DatasetFormatError(f"{path}: no labelled images")
    return out


def load_gist(root: Path, split: int) -> tuple[list[Record], list[Record], Path]:
    """(train, test) records of official split ``split`` (0..4) and the data set dir."""
    d = find_dataset_dir(root, _is_gist, "GIST514-DB folder (images/ + annotations/*_anno_crop_split_*.json)")
    images = d / "images"
    index = _casefold_index(images)
    tr = d / "annotations" / f"train_anno_crop_split_{split}.json"
    va = d / "annotations" / f"val_anno_crop_split_{split}.json"
    for p in (tr, va):
        if not p.is_file():
            raise DatasetFormatError(f"{p}: missing (split {split})")
    train, test = _read_coco(tr, images, index), _read_coco(va, images, index)
    both = {r.path for r in train} & {r.path for r in test}
    if both:
        raise DatasetFormatError(f"{va}: {len(both)} image(s) also in {tr.name}, e.g. {sorted(p.name for p in both)[:3]}")
    return train, test, d


# ---------------------------------------------------------------------------- generic folder / CSV

def _class_dirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and any(f.suffix.lower() in IMAGE_EXTS for f in p.rglob("*")))


def _folder_records(d: Path, classes: list[str]) -> list[Record]:
    out = []
    for label, name in enumerate(classes):
        cdir = d / name
        if not cdir.is_dir():
            continue
        for f in sorted(cdir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                out.append(Record(f, label, f"img:{f.relative_to(d).with_suffix('').as_posix()}"))
    return out


def _sort_labels(labels: Iterable[str]) -> list[str]:
    labs = sorted(set(labels))
    if all(s.lstrip("-").isdigit() for s in labs):
        return sorted(labs, key=int)
    return labs


def load_folder(root: Path) -> tuple[list[str], list[Record], list[Record] | None]:
    """(class names, train-or-all records, test records or None) of a generic folder/CSV set."""
    root = Path(root).expanduser()
    csv_path = root if root.is_file() else (root / "labels.csv" if (root / "labels.csv").is_file() else None)
    if csv_path is not None:
        rows = _read_csv(csv_path, ("path", "label"))
        if not rows:
            raise DatasetFormatError(f"{csv_path}: no rows")
        classes = _sort_labels(r["label"] for _, r in rows)
        cidx = {c: i for i, c in enumerate(classes)}
        train, test = [], []
        for line, r in rows:
            if not r["path"] or not r["label"]:
                raise DatasetFormatError(f"{csv_path}:{line}: empty path or label")
            p = Path(r["path"])
            p = p if p.is_absolute() else csv_path.parent / p
            if not p.is_file():
                raise DatasetFormatError(f"{csv_path}:{line}: image {p} not found")
            rec = Record(p, cidx[r["label"]], r.get("group") or f"img:{p.stem}")
            sp = (r.get("split") or "train").lower()
            if sp not in ("train", "test", "val"):
                raise DatasetFormatError(f"{csv_path}:{line}: split {sp!r} is not train/test")
            (test if sp in ("test", "val") else train).append(rec)
        return classes, train, test or None
    if not root.is_dir():
        raise DatasetFormatError(f"{root}: neither a folder nor a CSV file")
    for test_name in ("test", "val"):
        if (root / "train").is_dir() and (root / test_name).is_dir():
            classes = sorted({p.name for p in _class_dirs(root / "train")} | {p.name for p in _class_dirs(root / test_name)})
            if not classes:
                raise DatasetFormatError(f"{root / 'train'}: no class folders with images")
            return classes, _folder_records(root / "train", classes), _folder_records(root / test_name, classes)
    classes = [p.name for p in _class_dirs(root)]
    if len(classes) < 2:
        raise DatasetFormatError(f"{root}: expected one folder of images per class (found {len(classes)}) "
                                 "or a labels.csv with path,label columns")
    return classes, _folder_records(root, classes), None


# ---------------------------------------------------------------------------- splitting

def group_split(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Split ``records`` into (rest, held-out) with about ``fraction`` of them held out, whole
    groups on one side, stratified by label where the group count allows (scikit-learn
    ``StratifiedGroupKFold``; falls back to ``GroupShuffleSplit``). Deterministic in ``seed``."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    records = list(records)
    if fraction <= 0 or len(records) < 2:
        return records, []
    groups = np.array([r.group for r in records])
    labels = np.array([r.label for r in records])
    n_groups = len(set(groups.tolist()))
    if n_groups < 2:
        raise ValueError("cannot hold out a group-wise subset from a single group")
    n_splits = max(2, round(1.0 / fraction))
    held: np.ndarray | None = None
    if n_groups >= n_splits:
        with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
            warnings.simplefilter("ignore")
            sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            try:
                _, held = next(iter(sgkf.split(np.zeros(len(records)), labels, groups)))
            except ValueError:  # every class smaller than n_splits: stratification impossible
                held = None
    if held is None or len(held) == 0:
        gss = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        _, held = next(iter(gss.split(np.zeros(len(records)), labels, groups)))
    mask = np.zeros(len(records), dtype=bool)
    mask[held] = True
    rest = [r for r, m in zip(records, mask) if not m]
    out = [r for r, m in zip(records, mask) if m]
    if not rest:  # keep something to train on
        return records, []
    return rest, out


def load_task(task: str, data_root: str | Path, split: int | None = None, cv: bool = False, kfold: int = 5,
              test_fraction: float = 0.2, seed: int = 0) -> TaskData:
    """Records and official split(s) of a task.

    split: BUS-BRA test fold (1..kfold, default 1), GIST514 split (0..4, default 0); ignored
        (must be None) for MMOTU-2D and the folder task.
    cv: every fold / split of the task, one :class:`Split` each (BUS-BRA, GIST514).
    kfold: BUS-BRA fold file (5 or 10).
    test_fraction, seed: folder task without a given test set — held-out test by group.
    """
    root = Path(data_root).expanduser()
    if task == "busbra":
        records, folds, d = load_busbra(root, kfold)
        wanted = list(range(1, kfold + 1)) if cv else [1 if split is None else split]
        splits = []
        for k in wanted:
            if not 1 <= k <= kfold:
                raise ValueError(f"BUS-BRA --split is a test fold in 1..{kfold}, got {k}")
            splits.append(Split(f"fold{k}", [r for r in records if folds[r.path] != k],
                                [r for r in records if folds[r.path] == k]))
        data = TaskData(task, list(TASKS[task].class_names), d, splits)
    elif task == "mmotu2d":
        if cv or split not in (None, 0):
            raise ValueError("MMOTU-2D has one official split (train_cls.txt / val_cls.txt): no --cv/--split")
        train, test, d = load_mmotu(root)
        data = TaskData(task, list(MMOTU_CLASSES), d, [Split("official", train, test)])
    elif task == "gist514":
        wanted = list(range(GIST_SPLITS)) if cv else [0 if split is None else split]
        splits = []
        d = root
        for k in wanted:
            if not 0 <= k < GIST_SPLITS:
                raise ValueError(f"GIST514 --split is in 0..{GIST_SPLITS - 1}, got {k}")
            train, test, d = load_gist(root, k)
            splits.append(Split(f"split{k}", train, test))
        data = TaskData(task, list(TASKS[task].class_names), d, splits)
    elif task == "folder":
        if cv or split is not None:
            raise ValueError("the folder task has no official folds: no --cv/--split")
        classes, train, test = load_folder(root)
        if test is None:
            train, test = group_split(train, test_fraction, seed)
            if not test:
                raise DatasetFormatError(f"{root}: too few images/groups to hold out a test set")
        data = TaskData(task, classes, root, [Split("holdout", train, test)])
    else:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(TASKS)}")
    for s in data.splits:
        if not s.train or not s.test:
            raise DatasetFormatError(f"{data.root}: split {s.name} has an empty train or test side")
        _group_check(s, str(data.root))
    return data
