"""Dataset adapters and splits on synthetic trees laid out like each distributed data set."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from finetune.tasks import (
    MMOTU_CLASSES,
    DatasetFormatError,
    Record,
    group_split,
    load_task,
)

try:
    from finetune_fixtures import make_busbra, make_folder, make_gist, make_mmotu
except ImportError:  # tests/ imported as a package
    from tests.finetune_fixtures import make_busbra, make_folder, make_gist, make_mmotu


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("downstream")
    return {
        "busbra": make_busbra(root / "busbra_zip", n_cases=18),
        "mmotu": make_mmotu(root / "mmotu_zip", n_train=16, n_val=8),
        "gist": make_gist(root / "gist_zip", n=20),
        "folder": make_folder(root / "folder", per_class=8),
    }


def _ids(records: list[Record]) -> set[str]:
    return {r.path.stem for r in records}


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------- BUS-BRA

def test_busbra_parses_labels_and_cases(trees):
    gt = trees["busbra"]
    data = load_task("busbra", gt["dir"].parent)  # the unzipped folder holding BUSBRA/
    assert data.class_names == ["benign", "malignant"]
    assert data.root == gt["dir"]
    s = data.splits[0]
    recs = s.train + s.test
    assert sorted(_ids(recs)) == sorted(gt["ids"])
    for r in recs:
        assert r.label == gt["label"][r.path.stem]
        assert r.group == f"case:{gt['case'][r.path.stem]}"
    assert max(Counter(gt["case"].values()).values()) > 1  # the tree really shares cases


def test_busbra_default_split_is_official_fold1(trees):
    gt = trees["busbra"]
    s = load_task("busbra", gt["dir"]).splits[0]  # the data set folder itself works too
    assert s.name == "fold1"
    assert _ids(s.test) == {i for i, k in gt["fold5"].items() if k == 1}
    assert _ids(s.train) == {i for i, k in gt["fold5"].items() if k != 1}
    assert not ({r.group for r in s.train} & {r.group for r in s.test})


def test_busbra_cv_and_ten_folds(trees):
    gt = trees["busbra"]
    data = load_task("busbra", gt["dir"], cv=True)
    assert [s.name for s in data.splits] == [f"fold{k}" for k in range(1, 6)]
    tested = [i for s in data.splits for i in _ids(s.test)]
    assert sorted(tested) == sorted(gt["ids"])  # every image tested exactly once
    s3 = load_task("busbra", gt["dir"], split=3, kfold=10).splits[0]
    assert _ids(s3.test) == {i for i, k in gt["fold10"].items() if k == 3}
    with pytest.raises(ValueError, match="1..5"):
        load_task("busbra", gt["dir"], split=6)


def test_busbra_case_spanning_folds_is_kept_on_one_side(trees, tmp_path):
    gt = trees["busbra"]
    d = _copy_tree(gt["dir"], tmp_path / "BUSBRA")
    multi = next(c for c, n in Counter(gt["case"].values()).items() if n > 1)
    ids = [i for i in gt["ids"] if gt["case"][i] == multi]
    lines = (d / "5-fold-cv.csv").read_text().splitlines()
    moved = ids[0]
    new_fold = 1 if gt["fold5"][moved] != 1 else 2
    lines = [line if not line.startswith(moved + ",") else line.rsplit(",", 1)[0] + f",{new_fold}" for line in lines]
    (d / "5-fold-cv.csv").write_text("\n".join(lines) + "\n")
    for s in load_task("busbra", d, cv=True).splits:
        assert not ({r.group for r in s.train} & {r.group for r in s.test}), s.name
        in_test = [i in _ids(s.test) for i in ids]
        assert all(in_test) or not any(in_test)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda t: t.replace("benign", "unsure", 1), r"bus_data\.csv:2: Pathology 'unsure'"),
    (lambda t: t + "bus_9999-l,99,x,benign,3,d,1,1,left,[]\n", r"bus_data\.csv:\d+: image .*bus_9999-l\.png not found"),
])
def test_busbra_malformed_csv_names_file_and_line(trees, tmp_path, edit, match):
    d = _copy_tree(trees["busbra"]["dir"], tmp_path / "BUSBRA")
    csv = d / "bus_data.csv"
    # put a benign row first so the first "benign" is on line 2
    lines = csv.read_text().splitlines()
    body = sorted(lines[1:], key=lambda x: ",benign," not in x)
    csv.write_text("\n".join([lines[0], *body]) + "\n")
    csv.write_text(edit(csv.read_text()))
    with pytest.raises(DatasetFormatError, match=match):
        load_task("busbra", d)


def test_busbra_bad_fold_value(trees, tmp_path):
    d = _copy_tree(trees["busbra"]["dir"], tmp_path / "BUSBRA")
    lines = (d / "5-fold-cv.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",seven"
    (d / "5-fold-cv.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=r"5-fold-cv\.csv:4: kFold 'seven'"):
        load_task("busbra", d)


# ---------------------------------------------------------------------------- MMOTU-2D

def test_mmotu_official_lists(trees):
    gt = trees["mmotu"]
    for root in (gt["dir"].parent, gt["dir"]):  # folder holding OTU_2d/, or OTU_2d/ itself
        data = load_task("mmotu2d", root)
        assert data.class_names == list(MMOTU_CLASSES) and len(data.class_names) == 8
        s = data.splits[0]
        assert [(r.path.name, r.label) for r in s.train] == gt["train"]
        assert [(r.path.name, r.label) for r in s.test] == gt["val"]
        assert len({r.group for r in s.train + s.test}) == len(s.train) + len(s.test)
    with pytest.raises(ValueError, match="one official split"):
        load_task("mmotu2d", gt["dir"], cv=True)


@pytest.mark.parametrize(("line", "match"), [
    ("5.JPG 3 extra", r"train_cls\.txt:3: expected '<name> <label>'"),
    ("5.JPG x", r"train_cls\.txt:3: label 'x' is not an integer"),
    ("5.JPG 8", r"train_cls\.txt:3: label 8 outside 0..7"),
    ("nope.JPG 1", r"train_cls\.txt:3: image .*nope\.JPG not found"),
])
def test_mmotu_malformed_line(trees, tmp_path, line, match):
    d = _copy_tree(trees["mmotu"]["dir"], tmp_path / "OTU_2d")
    lines = (d / "train_cls.txt").read_text().splitlines()
    lines[2] = line
    (d / "train_cls.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFormatError, match=match):
        load_task("mmotu2d", d)


def test_mmotu_case_insensitive_names(trees, tmp_path):
    d = _copy_tree(trees["mmotu"]["dir"], tmp_path / "OTU_2d")
    first = trees["mmotu"]["train"][0][0]
    (d / "images" / first).rename(d / "images" / first.lower())  # e.g. "12.jpg" on disk
    s = load_task("mmotu2d", d).splits[0]
    assert s.train[0].path.name == first.lower()


# ---------------------------------------------------------------------------- GIST514-DB

def test_gist_splits_follow_coco_files(trees):
    gt = trees["gist"]
    data = load_task("gist514", gt["dir"].parent)
    assert data.class_names == ["leiomyoma", "GIST"]
    s = data.splits[0]
    assert s.name == "split0"
    assert sorted(r.path.name for r in s.test) == gt["val"][0]
    for r in s.train + s.test:
        assert r.label == gt["label"][r.path.name]
    cv = load_task("gist514", gt["dir"], cv=True)
    assert [s.name for s in cv.splits] == [f"split{k}" for k in range(5)]
    for k, s in enumerate(cv.splits):
        assert sorted(r.path.name for r in s.test) == gt["val"][k]
        assert not ({r.path for r in s.train} & {r.path for r in s.test})
    s2 = load_task("gist514", gt["dir"], split=2).splits[0]
    assert sorted(r.path.name for r in s2.test) == gt["val"][2]


def _set_patients(d: Path, split: int, key) -> None:
    for side in ("train", "val"):
        p = d / "annotations" / f"{side}_anno_crop_split_{split}.json"
        coco = json.loads(p.read_text())
        for im in coco["images"]:
            im["patient_id"] = key(side, im["id"])
        p.write_text(json.dumps(coco))


def test_gist_patient_key_groups(trees, tmp_path, caplog):
    d = _copy_tree(trees["gist"]["dir"], tmp_path / "gist")
    _set_patients(d, 0, lambda side, iid: f"{side}{iid % 3}")
    with caplog.at_level("WARNING"):
        s = load_task("gist514", d).splits[0]
    assert {r.group for r in s.train} == {f"patient:train{i}" for i in range(3)}
    assert {r.group for r in s.test} <= {f"patient:val{i}" for i in range(3)}
    assert "both sides" not in caplog.text
    # a patient on both sides of an official split is kept as distributed, but reported
    _set_patients(d, 0, lambda side, iid: f"P{iid % 2}")
    with caplog.at_level("WARNING"):
        s = load_task("gist514", d).splits[0]
    assert "both sides" in caplog.text and "patient:P0" in caplog.text


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda c: c["categories"].__setitem__(1, {"id": 2, "name": "schwannoma"}), "schwannoma"),
    (lambda c: c.pop("annotations"), "not a COCO file"),
    (lambda c: c["annotations"][0].pop("category_id"), r"annotations\[0\] lacks"),
    (lambda c: c["images"][0].__setitem__("file_name", "missing.jpg"), r"images\[0\] file missing\.jpg not found"),
])
def test_gist_malformed_coco(trees, tmp_path, mutate, match):
    d = _copy_tree(trees["gist"]["dir"], tmp_path / "gist")
    p = d / "annotations" / "train_anno_crop_split_0.json"
    coco = json.loads(p.read_text())
    mutate(coco)
    p.write_text(json.dumps(coco))
    with pytest.raises(DatasetFormatError, match=match) as ei:
        load_task("gist514", d)
    assert "train_anno_crop_split_0.json" in str(ei.value)


def test_gist_invalid_json_names_line(trees, tmp_path):
    d = _copy_tree(trees["gist"]["dir"], tmp_path / "gist")
    p = d / "annotations" / "val_anno_crop_split_0.json"
    p.write_text('{\n"images": [\n,]\n}')
    with pytest.raises(DatasetFormatError, match=r"val_anno_crop_split_0\.json:3: invalid JSON"):
        load_task("gist514", d)


# ---------------------------------------------------------------------------- generic

def test_folder_classes_and_holdout(trees):
    gt = trees["folder"]
    (gt["dir"] / "labels.csv").rename(gt["dir"] / "labels.bak")  # plain class folders first
    try:
        data = load_task("folder", gt["dir"], test_fraction=0.25, seed=1)
    finally:
        (gt["dir"] / "labels.bak").rename(gt["dir"] / "labels.csv")
    assert data.class_names == ["cyst", "solid"]
    s = data.splits[0]
    assert len(s.train) + len(s.test) == 16
    assert {r.label for r in s.test} == {0, 1}  # stratified
    for r in s.train + s.test:
        assert r.label == (0 if r.path.parent.name == "cyst" else 1)


def test_folder_csv_groups_respected(trees):
    gt = trees["folder"]
    data = load_task("folder", gt["csv"], test_fraction=0.25, seed=0)
    s = data.splits[0]
    groups_tr, groups_te = {r.group for r in s.train}, {r.group for r in s.test}
    assert groups_te and not (groups_tr & groups_te)
    assert all(g.startswith("pt") for g in groups_tr | groups_te)


def test_folder_csv_errors(tmp_path, trees):
    gt = trees["folder"]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\n" + f"{gt['dir'] / gt['rows'][0][0]},cyst\n" + "nowhere.png,solid\n")
    with pytest.raises(DatasetFormatError, match=r"bad\.csv:3: image .*nowhere\.png not found"):
        load_task("folder", bad)
    bad.write_text("file,label\nx.png,cyst\n")
    with pytest.raises(DatasetFormatError, match=r"bad\.csv:1: header"):
        load_task("folder", bad)
    bad.write_text("path,label\n" + f"{gt['dir'] / gt['rows'][0][0]},cyst,extra\n")
    with pytest.raises(DatasetFormatError, match=r"bad\.csv:2: more fields"):
        load_task("folder", bad)


def test_missing_dataset_is_reported(tmp_path):
    with pytest.raises(DatasetFormatError, match="no BUS-BRA folder"):
        load_task("busbra", tmp_path)


# ---------------------------------------------------------------------------- group split

def test_group_split_disjoint_stratified_deterministic():
    recs = [Record(Path(f"{i}.png"), i % 2, f"g{i // 3}") for i in range(60)]
    a_rest, a_val = group_split(recs, 0.2, seed=5)
    _, b_val = group_split(recs, 0.2, seed=5)
    assert [r.path for r in a_val] == [r.path for r in b_val]
    assert not ({r.group for r in a_rest} & {r.group for r in a_val})
    assert len(a_rest) + len(a_val) == 60
    assert 6 <= len(a_val) <= 18
    assert {r.label for r in a_val} == {0, 1}
    _, c_val = group_split(recs, 0.2, seed=6)
    assert [r.path for r in c_val] != [r.path for r in a_val]


def test_group_split_tiny_classes_fall_back():
    # every class smaller than the fold count: stratified k-fold is impossible
    recs = [Record(Path(f"{i}.png"), i % 8, f"g{i}") for i in range(16)]
    rest, val = group_split(recs, 0.15, seed=0)
    assert val and rest and len(rest) + len(val) == 16
