"""Real scanner files (deid-data, pydicom-data, pydicom's test files): crops against hand labels,
the scanner-region path, and no banner token readable in any written frame.

Labels: tests/fixtures/real_scan_boxes.json. OCR judge: Tesseract (Debian's tesseract-ocr +
pytesseract) when installed, else the full PP-OCR pipeline (detector + recogniser) shipped in
rapidocr-onnxruntime. Both run offline. Files whose package is missing are skipped, not passed.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from real_scan_iou import iou, locate  # noqa: E402  (the benchmark and the test share the loader)

from sharder.build import build  # noqa: E402
from sharder.codec import decode  # noqa: E402
from sharder.config import BuildConfig, DatasetSpec  # noqa: E402
from sharder.curate import CurateOptions  # noqa: E402
from sharder.frame_step import frame_crops  # noqa: E402
from sharder.frames import ReaderOptions  # noqa: E402
from sharder.manifest import Manifest  # noqa: E402
from sharder.readers import iter_frames  # noqa: E402
from sharder.shards import iter_shard  # noqa: E402

FILES = json.loads((ROOT / "tests/fixtures/real_scan_boxes.json").read_text())["files"]
needs_ocr_pkgs = pytest.mark.skipif(importlib.util.find_spec("rapidocr_onnxruntime") is None,
                                    reason="rapidocr-onnxruntime (the ocr extra) is not installed")


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    """Every fixture file that is installed, copied into one dataset folder."""
    tmp = tmp_path_factory.mktemp("real_src")
    out = tmp_path_factory.mktemp("real") / "us"
    out.mkdir()
    for e in FILES:
        p = locate(e, tmp)
        if p is not None:
            shutil.copy(p, out / f"{e['id']}.dcm")
    if not any(out.iterdir()):
        pytest.skip("none of deid-data, pydicom-data installed")
    return out


@pytest.mark.parametrize("entry", FILES, ids=[e["id"] for e in FILES])
def test_crop_matches_label(entry: dict, real_dir: Path) -> None:
    path = real_dir / f"{entry['id']}.dcm"
    if not path.exists():
        pytest.skip(f"{entry['package']} not installed")
    frame = next(iter_frames(path, "dicom", ReaderOptions(max_frames=1)))
    crops = frame_crops(frame, CurateOptions())
    got = [tuple(c.crop) for _, c in crops]
    best = [max(iou(lab, g) for g in got) for lab in entry["boxes"]]
    assert min(best) >= 0.9, f"{entry['id']}: crops {got} vs labels {entry['boxes']}: IoU {best}"
    if entry["regions"]:  # a DICOM with usable regions takes the region path
        assert any(op.startswith("crop:region") for op in crops[0][1].ops), crops[0][1].ops
    assert len(crops) == len(entry["boxes"])  # dual view: one sample per image region


@pytest.mark.parametrize("fid, how", [("pyd_palette", "clipped"), ("pyd_ybr_color", "rescaled")])
def test_regions_that_do_not_fit_are_refitted_and_checked(fid: str, how: str, real_dir: Path) -> None:
    """examples_palette.dcm was cut to 350 of 600 rows, examples_ybr_color.dcm resampled to
    320x240, both after the header was written: the refit is named in ops."""
    path = real_dir / f"{fid}.dcm"
    if not path.exists():
        pytest.skip("pydicom test files missing")
    frame = next(iter_frames(path, "dicom", ReaderOptions(max_frames=1)))
    (_, cur), = frame_crops(frame, CurateOptions())
    assert f"crop:region_{how}" in cur.ops


def test_regions_fitting_no_way_fall_back_to_pixels() -> None:
    from sharder.frames import Frame
    from sharder.regions import UsRegion

    rng = np.random.default_rng(0)
    px = np.zeros((200, 300), np.uint8)
    px[40:180, 60:260] = rng.integers(40, 200, (140, 200), dtype=np.uint8)  # the "image"
    # a region 5x too large on both axes: no cut or 1/2..1/4 resample explains it
    frame = Frame(px, regions=[UsRegion(0, 0, 1000, 1500, 1, 1).as_list()])
    (_, cur), = frame_crops(frame, CurateOptions(short_side=128))
    assert cur.ops[:2] == ["crop:region_mismatch", "crop:auto"]
    assert iou(cur.crop, (40, 60, 180, 260)) >= 0.9


# ------------------------------------------------------------------------------ no readable PHI
def _ocr():
    """(name, image -> text) of the independent OCR judge."""
    try:
        import pytesseract

        pytesseract.get_tesseract_version()
        return "tesseract", lambda img: pytesseract.image_to_string(img, config="--psm 11")
    except Exception:  # noqa: BLE001 - not installed (binary or module): use the shipped OCR
        from rapidocr_onnxruntime import RapidOCR

        eng = RapidOCR()
        return "rapidocr", lambda img: " ".join(r[1] for r in (eng(img)[0] or []))


@pytest.fixture(scope="module", params=[False, True], ids=["reject", "reject+deannotate"])
def real_shards(request, real_dir: Path, tmp_path_factory) -> Path:
    """Every real file built with the text gate rejecting; plain, and with de-annotation (the
    registry's setting for 2D sets, under which typed labels are removed as marks and their
    frames survive)."""
    out = tmp_path_factory.mktemp("real_shards")
    cfg = BuildConfig(datasets=[DatasetSpec(name="us", root=str(real_dir), max_frames=3,
                                            deannotate=request.param)],
                      text_policy="reject", val_fraction=0.0, dedup_near=False)
    build(cfg, out, workers=1, progress=False)
    return out


def _norm(s: str) -> str:
    return re.sub(r"[^0-9a-z]", "", s.lower())


@needs_ocr_pkgs
def test_no_banner_token_readable_in_any_written_frame(real_shards: Path) -> None:
    name, ocr = _ocr()
    tokens = {e["id"]: [_norm(t) for t in e["banner_tokens"]] for e in FILES}
    all_tokens = sorted({t for ts in tokens.values() for t in ts if len(t) >= 4})
    m = Manifest.load(real_shards)
    n = 0
    for shard in m.shards():
        for key, mem in iter_shard(shard):
            img = decode(mem["jpg"], "jpg")
            # enlarged 2x: OCR engines want ~20 px glyphs; a leak must not hide behind small print
            big = np.kron(img, np.ones((2, 2), np.uint8))
            text = _norm(ocr(big))
            leaked = [t for t in all_tokens if t in text]
            assert not leaked, f"{name} read {leaked} in written frame {key}"
            n += 1
    from sharder.verify import verify

    rep = verify(real_shards, progress=False)
    assert rep.ok, rep.errors
    gate = m.data["totals"]["text_gate"]
    assert gate["checked"] > 0 and gate["found"] == gate["rejected"] > 0
    assert m.data["totals"]["rejected_by_reason"].get("text_found", 0) == gate["rejected"]
    from sharder.report import stats_table

    assert f"{gate['rejected']} rejected" in stats_table(real_shards)  # usf-shard stats shows it


@needs_ocr_pkgs
def test_text_gate_clean_policy_inpaints_instead(real_dir: Path, tmp_path) -> None:
    one = tmp_path / "src"
    one.mkdir()
    shutil.copy(real_dir / "deid_rgb_cine.dcm", one / "a.dcm")
    cfg = BuildConfig(datasets=[DatasetSpec(name="us", root=str(one), max_frames=3, text_policy="clean")],
                      val_fraction=0.0, dedup_near=False, dedup_exact=False)
    m = build(cfg, tmp_path / "out", workers=1, progress=False)
    g = m["datasets"]["us"]["text_gate"]
    # the typed annotation inside the image is found and inpainted, the frames are kept
    assert g["policy"] == "clean" and g["found"] == g["cleaned"] == 3 and g["rejected"] == 0
    assert m["totals"]["written"] == 3


def test_regions_are_integers_only_and_mismatch_is_detected() -> None:
    from sharder.regions import UsRegion, select_image_regions

    tissue = UsRegion(10, 20, 110, 220, 1, 1)
    ecg = UsRegion(120, 20, 150, 220, 4, 10)
    colour_box = UsRegion(30, 60, 80, 120, 1, 2)  # nested in the tissue image: not a sample
    boxes, status = select_image_regions([tissue, ecg, colour_box], (200, 300))
    assert status == "ok" and boxes == [(10, 20, 110, 220)]
    assert select_image_regions([UsRegion(0, 0, 400, 300, 1, 1)], (200, 300)) == ([], "mismatch")
    from sharder.regions import refit_regions

    assert refit_regions([UsRegion(10, 20, 400, 300, 1, 1)], (200, 300))[1] == "clipped"
    assert refit_regions([UsRegion(10, 20, 400, 600, 1, 1)], (200, 300)) == (
        [UsRegion(5, 10, 200, 300, 1, 1)], "rescaled")
    assert select_image_regions([ecg], (200, 300)) == ([], "none")
    assert all(isinstance(v, int) for v in tissue.as_list())


def test_rejects_are_reasons_not_text(real_shards: Path) -> None:
    for line in (real_shards / "rejects.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["reason"] != "reader_error", r
        assert r["reason"] in {"text_found", "too_small", "blank"}, r


def test_dual_view_writes_one_sample_per_region_and_verifies(real_dir: Path, tmp_path) -> None:
    from sharder.verify import verify

    one = tmp_path / "src"
    one.mkdir()
    shutil.copy(real_dir / "pyd_aloka.dcm", one / "a.dcm")
    # text gate off: this test is about regions (the ALOKA view has typed text inside its images,
    # which the default policy, reject, drops; the gate is tested above)
    cfg = BuildConfig(datasets=[DatasetSpec(name="us", root=str(one))], val_fraction=0.0,
                      dedup_near=False, text_policy="off")
    m = build(cfg, tmp_path / "out", workers=1, progress=False)
    metas = [json.loads(mem["json"]) for sh in Manifest.load(tmp_path / "out").shards()
             for _, mem in iter_shard(sh)]
    assert sorted(meta.get("region", 0) for meta in metas) == [0, 1]  # region 0 keeps the old key
    assert m["totals"]["frames"] == 2 and len({meta["crop"][1] for meta in metas}) == 2
    rep = verify(tmp_path / "out", progress=False)  # "region" is an allowlisted key
    assert rep.ok, rep.errors


def test_a_text_policy_without_the_detector_fails_before_any_work(tmp_path, monkeypatch) -> None:
    from sharder.build import BuildError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "rapidocr_onnxruntime" else real(name, *a))
    (tmp_path / "src").mkdir()
    cfg = BuildConfig(datasets=[DatasetSpec(name="us", root=str(tmp_path / "src"))], text_policy="reject")
    with pytest.raises(BuildError, match=r"usf-mae\[ocr\]"):
        build(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
