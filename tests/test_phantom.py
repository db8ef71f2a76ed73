"""Tests of the synthetic ultrasound generator (phantom/)."""

from __future__ import annotations

import ast
import csv
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from phantom import (
    ANATOMIES,
    PROBES,
    US_MULTIFRAME_SOP,
    Lesion,
    probe_geometry,
    render_frame,
    write_demo_corpus,
    write_downstream_task,
)

H, W = 480, 640


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _tissue_coords(probe: str, h: int = H, w: int = W):
    """(z, x, mask) per pixel for ``probe`` on an h x w screen."""
    g = probe_geometry(probe, h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - g.top) / g.depth_px, (xx - w / 2) / g.depth_px, g.mask()


def _corr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask].astype(np.float64), b[mask].astype(np.float64))[0, 1])


# ------------------------------------------------------------------------------- render_frame
@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("anatomy", ANATOMIES)
def test_shapes_dtypes_every_probe_and_anatomy(probe, anatomy):
    img = render_frame(_rng(), height=120, width=160, probe=probe, anatomy=anatomy, scene_seed=1)
    assert img.shape == (120, 160) and img.dtype == np.uint8
    inside = img[probe_geometry(probe, 120, 160).mask()]
    assert inside.mean() > 10 and inside.std() > 5  # tissue with speckle, not a blank footprint
    rgb = render_frame(
        _rng(), height=120, width=160, probe=probe, anatomy=anatomy, doppler=True, scene_seed=1
    )
    assert rgb.shape == (120, 160, 3) and rgb.dtype == np.uint8


def test_doppler_box_has_red_and_blue_flow_inside_the_footprint():
    rgb = render_frame(_rng(), probe="linear", anatomy="thyroid", doppler=True, scene_seed=2).astype(int)
    mask = probe_geometry("linear", H, W).mask()
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    coloured = mask & ((r - g > 60) | (b - g > 60))
    assert coloured.sum() > 100
    assert ((r - b > 60) & mask).any() and ((b - r > 60) & mask).any()  # both directions (carotid, jugular)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError):
        render_frame(_rng(), anatomy="spleen")
    with pytest.raises(ValueError):
        render_frame(_rng(), probe="endocavity")
    with pytest.raises(ValueError):
        render_frame(_rng(), lesion=Lesion("tumour"))


def test_determinism_of_arrays():
    kw = {"probe": "curved", "anatomy": "liver", "lesion": Lesion("cyst", (0.4, 0.1), (0.06, 0.08))}
    a = render_frame(_rng(7), banner="X", **kw)
    b = render_frame(_rng(7), banner="X", **kw)
    c = render_frame(_rng(8), banner="X", **kw)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_determinism_of_written_png_files(tmp_path):
    def digest(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    write_downstream_task(tmp_path / "a", seed=3, n_patients=3, per_patient=2)
    write_downstream_task(tmp_path / "b", seed=3, n_patients=3, per_patient=2)
    write_downstream_task(tmp_path / "c", seed=4, n_patients=3, per_patient=2)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert len(a) == 7 and a == b
    assert a.keys() == c.keys() and any(a[k] != c[k] for k in a if k.endswith(".png"))


@pytest.mark.parametrize("probe", PROBES)
def test_black_background_banner_and_gap(probe):
    g = probe_geometry(probe, H, W)
    img = render_frame(
        _rng(), probe=probe, anatomy="kidney", banner="DEMO^PATIENT_001  HOSPITAL", scene_seed=3
    )
    mask = g.mask()
    # outside the footprint, away from the banner and the tick/grey-bar column on the right: black
    free = ~mask
    free[: g.top] = False
    free[:, W - round(0.11 * W) :] = False
    assert free.sum() > 0.2 * H * W
    assert img[free].max() == 0
    # banner rows hold bright text; the rows between banner and footprint are black
    banner = img[: g.banner_rows]
    assert banner.max() >= 200 and (banner > 128).sum() > 100
    assert img[g.banner_rows : g.top].max() == 0
    assert not mask[: g.top].any()
    # no banner requested: nothing at the top at all
    plain = render_frame(_rng(), probe=probe, anatomy="kidney", scene_seed=3)
    assert plain[: g.top].max() == 0


def test_overlays_ecg_calipers_scale():
    g = probe_geometry("sector", H, W)
    base = render_frame(_rng(), anatomy="cardiac", scene_seed=4)
    ecg = render_frame(_rng(), anatomy="cardiac", scene_seed=4, ecg=True)
    assert base[g.bottom :].max() == 0 and ecg[g.bottom :].max() > 150  # ECG strip under the footprint
    les = Lesion("cyst", (0.45, 0.0), (0.08, 0.08))
    plain = render_frame(_rng(), anatomy="liver", lesion=les, scene_seed=4)
    cal = render_frame(_rng(), anatomy="liver", lesion=les, scene_seed=4, calipers=True)
    y, x = g.tissue_to_pixel(0.45, -0.08)  # '+' at the lesion's lateral edge
    assert cal[y, x] == 255 and plain[y, x] != 255
    x_bar = W - round(0.025 * W)  # grey bar: a top-to-bottom ramp
    col = base[g.top : g.top + int(0.3 * g.depth_px), x_bar].astype(int)
    assert col[0] > 240 and col[-1] < 15 and (np.diff(col) <= 0).all()


@pytest.mark.parametrize(
    ("probe", "anatomy", "dphase"), [("curved", "liver", 0.01), ("sector", "cardiac", 0.03)]
)
def test_cine_frames_coherent_and_scenes_differ(probe, anatomy, dphase):
    mask = probe_geometry(probe, H, W).mask()
    a = render_frame(_rng(1), probe=probe, anatomy=anatomy, scene_seed=5, phase=0.1)
    b = render_frame(_rng(2), probe=probe, anatomy=anatomy, scene_seed=5, phase=0.1 + dphase)
    far = render_frame(_rng(2), probe=probe, anatomy=anatomy, scene_seed=5, phase=0.5)
    other = render_frame(_rng(2), probe=probe, anatomy=anatomy, scene_seed=6, phase=0.1)
    assert not np.array_equal(a, b)  # it does move (and has fresh electronic noise)
    assert _corr(a, b, mask) > 0.8  # ... but nearby cine frames are near-duplicates
    assert _corr(a, far, mask) < _corr(a, b, mask) - 0.05  # real motion over the cycle
    assert _corr(a, other, mask) < 0.7  # another scene: different speckle and layout


def _lesion_stats(kind: str, probe: str, anatomy: str, centre, r: float, seed: int):
    """(lesion - reference inside, band below: lesion - reference, band below - same depth beside)."""
    z, x, mask = _tissue_coords(probe)
    cz, cx = centre
    les = Lesion(kind, centre, (r, r))
    a = render_frame(_rng(0), probe=probe, anatomy=anatomy, scene_seed=seed, lesion=les).astype(float)
    ref = render_frame(_rng(0), probe=probe, anatomy=anatomy, scene_seed=seed).astype(float)
    inside = ((z - cz) ** 2 + (x - cx) ** 2 < (0.7 * r) ** 2) & mask
    depth = (z > cz + r + 0.02) & (z < cz + r + 0.15) & mask
    below = depth & (np.abs(x - cx) < 0.6 * r)
    beside = depth & (np.abs(x - cx) > 2 * r) & (np.abs(x - cx) < 4 * r)
    return (
        a[inside].mean() - ref[inside].mean(),
        a[below].mean() - ref[below].mean(),
        a[below].mean() - a[beside].mean(),
    )


@pytest.mark.parametrize(("probe", "anatomy"), [("curved", "liver"), ("linear", "breast")])
def test_cyst_is_anechoic_with_posterior_enhancement(probe, anatomy):
    stats = np.array([_lesion_stats("cyst", probe, anatomy, (0.4, 0.0), 0.07, s) for s in range(3)])
    assert (stats[:, 0] < -40).all()  # dark fluid
    assert (stats[:, 1] > 10).all()  # brighter band behind the cyst than without it
    assert stats[:, 2].mean() > 5  # ... and than the same depth beside it


@pytest.mark.parametrize(("probe", "anatomy"), [("curved", "liver"), ("linear", "breast")])
def test_solid_is_hypoechoic_with_posterior_shadow(probe, anatomy):
    stats = np.array([_lesion_stats("solid", probe, anatomy, (0.4, 0.0), 0.07, s) for s in range(3)])
    assert (stats[:, 0] < -15).all()  # hypoechoic
    assert (stats[:, 1] < -20).all()  # shadow behind it
    assert stats[:, 2].mean() < -20  # darker than the same depth beside it


def test_lesion_vanishes_out_of_plane():
    les = Lesion("cyst", (0.4, 0.0), (0.07, 0.07))
    kw = {"probe": "curved", "anatomy": "liver", "scene_seed": 9, "lesion": les}
    ref = render_frame(_rng(), probe="curved", anatomy="liver", scene_seed=9, elevation=0.2)
    assert np.array_equal(render_frame(_rng(), elevation=0.2, **kw), ref)
    assert not np.array_equal(render_frame(_rng(), elevation=0.0, **kw), ref)


# ------------------------------------------------------------------------------- demo corpus
DATASETS = (
    "breast_png",
    "thyroid_jpg",
    "cardiac_dicom",
    "liver_volumes",
    "fetal_video",
    "kidney_mixed",
    "broken",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    t0 = time.perf_counter()
    summary = write_demo_corpus(out, seed=0)
    secs = time.perf_counter() - t0
    frames = sum(s["frames"] for s in summary.values())
    mb = sum(s["bytes"] for s in summary.values()) / 1e6
    print(f"\nwrite_demo_corpus: {frames} frames, {mb:.1f} MB in {secs:.1f} s")
    return out, summary


def _files(root: Path, *exts: str) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and (not exts or p.name.endswith(exts)))


def test_corpus_layout_and_counts(corpus):
    out, summary = corpus
    assert sorted(summary) == sorted(DATASETS)
    assert sorted(p.name for p in out.iterdir()) == sorted(DATASETS)
    for name in DATASETS:
        assert len(_files(out / name)) == summary[name]["files"], name
    assert sum(s["bytes"] for s in summary.values()) < 40e6
    assert 400 <= sum(s["frames"] for s in summary.values()) <= 1000


def test_corpus_groups_by_patient_folder(corpus):
    out, _ = corpus
    # files outside DICOM carry the patient in their parent folder (the sharder's "auto" group rule)
    for name in ("breast_png", "thyroid_jpg", "liver_volumes", "fetal_video", "kidney_mixed"):
        files = _files(out / name)
        assert files and all(p.parent.parent == out / name for p in files), name
        assert all(p.parent.name.startswith("DEMO^PATIENT_") for p in files), name
    assert len({p.parent for p in _files(out / "liver_volumes")}) == len(_files(out / "liver_volumes"))


def test_corpus_png_stills(corpus):
    out, summary = corpus
    pngs = _files(out / "breast_png", ".png")
    assert len(pngs) >= 20
    # one folder per patient, named after the patient: the sharder must not leak these names
    assert all(p.parent.name.startswith("DEMO^PATIENT_") for p in pngs)
    assert len({p.parent for p in pngs}) == summary["breast_png"]["patients"] >= 2
    imgs = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in pngs]
    assert sum(i.dtype == np.uint16 for i in imgs) >= 2
    assert sum(i.ndim == 3 for i in imgs) >= 1
    assert sum(i.dtype == np.uint8 and i.ndim == 2 for i in imgs) >= 10
    kid = _files(out / "kidney_mixed", ".png")
    assert len(kid) == summary["kidney_mixed"]["files"] >= 3


def test_corpus_thyroid_formats_and_duplicates(corpus):
    out, summary = corpus
    root = out / "thyroid_jpg"
    assert len(_files(root, ".jpg")) >= 6
    assert len(_files(root, ".bmp")) == 1 and len(_files(root, ".tiff", ".tif")) == 1
    pairs = summary["thyroid_jpg"]["near_duplicate_pairs"]
    assert len(pairs) >= 2
    for jpg, png in pairs:
        a = cv2.imread(str(root / jpg), cv2.IMREAD_GRAYSCALE).astype(float)
        b = cv2.imread(str(root / png), cv2.IMREAD_GRAYSCALE).astype(float)
        assert a.shape == b.shape and np.abs(a - b).mean() < 3  # same content, lossy vs lossless


def test_corpus_dicom(corpus):
    pydicom = pytest.importorskip("pydicom")
    out, summary = corpus
    dss = {p.name: pydicom.dcmread(p) for p in _files(out / "cardiac_dicom", ".dcm")}
    assert len(dss) >= 4
    frames, photometric, syntaxes = 0, set(), set()
    for name, ds in dss.items():
        assert ds.SOPClassUID == US_MULTIFRAME_SOP and ds.Modality == "US"
        assert str(ds.PatientName).startswith("DEMO^PATIENT_") and ds.PatientID and ds.StudyInstanceUID
        assert ds.InstitutionName and len(ds.StudyDate) == 8
        arr = ds.pixel_array
        n = int(ds.NumberOfFrames)
        assert (arr.shape[0] if n > 1 else 1) == n, name
        frames += n
        photometric.add(ds.PhotometricInterpretation)
        syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
        if n > 1:
            assert 10 <= n <= 30
            mask = arr[0] > 0 if arr.ndim == 3 else arr[0, ..., 0] > 0
            c = _corr(arr[0], arr[1], mask) if arr.ndim == 3 else 1.0
            assert not np.array_equal(arr[0], arr[n // 2]) and c > 0.8  # real, smooth motion
    assert frames == summary["cardiac_dicom"]["frames"]
    assert {"MONOCHROME2", "RGB"} <= photometric
    assert {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"} <= syntaxes  # uncompressed and RLE
    assert sum(int(ds.NumberOfFrames) > 1 for ds in dss.values()) >= 3
    # the cross-dataset duplicate: a DICOM with the same pixels as a kidney PNG
    dup = dss[summary["cardiac_dicom"]["cross_duplicate"]].pixel_array
    png = cv2.imread(
        str(out / "kidney_mixed" / summary["kidney_mixed"]["cross_duplicate"]), cv2.IMREAD_UNCHANGED
    )
    assert np.array_equal(dup, png)


def test_corpus_volumes_and_videos(corpus):
    nib = pytest.importorskip("nibabel")
    av = pytest.importorskip("av")
    out, summary = corpus
    vols = _files(out / "liver_volumes")
    assert any(p.name.endswith(".nii.gz") for p in vols) and any(p.name.endswith(".nii") for p in vols)
    slices = 0
    for p in vols:
        v = np.asarray(nib.load(p).dataobj)
        assert v.ndim == 3 and 64 <= v.shape[2] <= 96 and v.dtype == np.uint8
        slices += v.shape[2]
        assert not np.array_equal(v[..., 0], v[..., -1])
    assert slices == summary["liver_volumes"]["frames"]
    vids = _files(out / "fetal_video", ".mp4")
    assert 1 <= len(vids) <= 2
    n = 0
    for p in vids:
        with av.open(str(p)) as c:
            k = sum(1 for _ in c.decode(video=0))
        assert 20 <= k <= 40
        n += k
    assert n == summary["fetal_video"]["frames"]


def test_corpus_broken_inputs(corpus):
    pydicom = pytest.importorskip("pydicom")
    out, _ = corpus
    root = out / "broken"
    assert sorted(p.name for p in root.iterdir()) == [
        "empty.png",
        "nopixels.dcm",
        "notes.png",
        "random.dcm",
        "truncated.png",
    ]
    assert (root / "empty.png").stat().st_size == 0
    for name in ("empty.png", "truncated.png", "notes.png"):
        assert cv2.imread(str(root / name)) is None
    assert "PixelData" not in pydicom.dcmread(root / "nopixels.dcm")
    with pytest.raises(Exception):  # noqa: B017 - any parse error will do
        pydicom.dcmread(root / "random.dcm")


def test_corpus_scale(tmp_path):
    summary = write_demo_corpus(tmp_path, seed=1, scale=0.3, patient_name="SMALL^SCALE")
    assert summary["breast_png"]["files"] == 10  # 2 patients x 5 instead of 6 x 5
    for name in DATASETS:
        assert summary[name]["files"] >= 1
        assert len(_files(tmp_path / name)) == summary[name]["files"]
    assert all(p.parent.name.startswith("SMALL^SCALE_") for p in _files(tmp_path / "breast_png"))


# ------------------------------------------------------------------------------- downstream task
def test_downstream_task(tmp_path):
    per = 3
    path = write_downstream_task(tmp_path, seed=0, n_patients=12, per_patient=per)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "patient"]
    assert len(rows) == 12 * per
    by_class = defaultdict(int)
    labels_of, rows_of = defaultdict(set), defaultdict(int)
    means = defaultdict(list)
    for r in rows:
        by_class[r["label"]] += 1
        labels_of[r["patient"]].add(r["label"])
        rows_of[r["patient"]] += 1
        img = cv2.imread(str(tmp_path / r["path"]), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.dtype == np.uint8 and img.ndim == 2
        means[r["label"]].append(img.mean())
    assert set(by_class) == {"normal", "cyst", "solid"}
    assert max(by_class.values()) - min(by_class.values()) <= per  # balanced to within one patient
    assert all(len(v) == 1 for v in labels_of.values())  # one class per patient
    assert set(rows_of.values()) == {per}  # every view of a patient shares its group id
    class_means = [float(np.mean(v)) for v in means.values()]
    assert max(class_means) - min(class_means) < 1.0  # mean brightness gives nothing away


# ------------------------------------------------------------------------------- package boundary
def _import_time_modules(tree: ast.Module):
    """Top-level module names imported when a module is imported (not inside functions)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]
        else:
            stack.extend(ast.iter_child_nodes(node))


def test_product_packages_import_the_phantom_only_lazily():
    """The phantom is demo/test data, not product code: no product module imports it at import
    time (``usf-shard demo`` imports it inside the command)."""
    root = Path(__file__).resolve().parents[1]
    files = [p for pkg in ("sharder", "dali_pipes", "trainer", "finetune") for p in (root / pkg).rglob("*.py")]
    assert len(files) > 20
    offenders = [
        str(p.relative_to(root))
        for p in files
        if "phantom" in set(_import_time_modules(ast.parse(p.read_text(), str(p))))
    ]
    assert offenders == []
    cli = ast.parse((root / "sharder" / "cli.py").read_text())
    lazily = {n.module for n in ast.walk(cli) if isinstance(n, ast.ImportFrom)}
    assert "phantom" in lazily  # the scan sees the lazy import, and leaves it alone
