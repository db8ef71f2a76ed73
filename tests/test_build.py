"""The sharder end to end: build, read back, verify, accounting, privacy, resume, leakage guard."""
from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from runconfig import ConfigError
from sharder import build as build_mod
from sharder.build import build
from sharder.codec import decode
from sharder.config import BuildConfig, DatasetSpec, load_config, quick_datasets
from sharder.curate import CurateOptions, curate
from sharder.manifest import Manifest
from sharder.shards import iter_shard
from sharder.verify import verify

from helpers import run_py

SHAREABLE = ("*.tar", "*.idx", "manifest.json", "duplicates.jsonl")


def _samples(root: Path, split=None):
    m = Manifest.load(root)
    for p in m.shards(split):
        for key, mem in iter_shard(p):
            yield p, key, mem, json.loads(mem["json"])


def test_demo_build_verifies_and_accounts(demo_shards):
    rep = verify(demo_shards, progress=False)
    assert rep.ok, rep.errors
    m = Manifest.load(demo_shards)
    t = m.data["totals"]
    assert t["frames"] == t["written"] + t["duplicates"] + t["rejected"]
    assert t["inputs"] == t["inputs_used"] + t["rejected_inputs"]
    assert t["written"] == rep.samples == sum(s["samples"] for s in m.data["shards"])
    # the five broken files are each reported with a reason, and nothing else from that folder
    rejects = [json.loads(x) for x in (demo_shards / "rejects.jsonl").read_text().splitlines()]
    broken = sorted(r["path"] for r in rejects if r["dataset"] == "broken")
    assert broken == ["empty.png", "nopixels.dcm", "notes.png", "random.dcm", "truncated.png"]
    assert all(r["reason"] and r["detail"] for r in rejects)
    # cine loops, volumes and videos contributed frames; dedup removed near-identical ones
    ds = m.data["datasets"]
    for name in ("cardiac_dicom", "liver_volumes", "fetal_video"):
        assert ds[name]["frames"] > ds[name]["inputs"]
        assert 0 < ds[name]["written"] < ds[name]["frames"]
    assert ds["breast_png"]["anatomy"] == "breast"
    dups = [json.loads(x) for x in (demo_shards / "duplicates.jsonl").read_text().splitlines()]
    assert len(dups) == t["duplicates"]
    # near-duplicates are found (the cross-dataset duplicate, a DICOM with scanner regions and
    # its PNG export, is cropped from the region in one and from the pixels in the other: a
    # couple of pixels apart, so it is dropped as near at distance 0 rather than as exact), and
    # every drop records its Hamming distance
    assert "near" in {d["kind"] for d in dups}
    assert all(isinstance(d["distance"], int) and 0 <= d["distance"] <= 4 for d in dups)
    assert any(d["distance"] == 0 for d in dups)


def test_samples_follow_the_contract(demo_shards):
    m = Manifest.load(demo_shards)
    n = 0
    for path, key, mem, meta in _samples(demo_shards, None):
        n += 1
        assert len(key) == 16 and int(key, 16) >= 0
        assert set(mem) == {"jpg", "json"}
        img = decode(mem["jpg"], "jpg")
        assert img.dtype == np.uint8 and min(img.shape) == 256
        assert meta["split"] in path.name
        assert set(meta) <= {"dataset", "anatomy", "split", "group", "source", "frame", "axis", "orig_hw",
                             "crop", "ops", "phash", "region"}
        assert meta["ops"] and len(meta["phash"]) == 16
    assert n == m.data["totals"]["written"]
    # .idx files exist and list every sample
    for p in m.shards(None):
        head = Path(f"{p}.idx").read_text().splitlines()[0].split()
        assert head[0] == "v1.2" and int(head[1]) == sum(1 for _ in iter_shard(p))


def test_pixels_round_trip_losslessly(tmp_path):
    """png codec: every sample decodes to exactly what curation made of its source."""
    from phantom import render_frame

    raw = tmp_path / "raw" / "liver_set"
    raw.mkdir(parents=True)
    want = set()
    for i in range(6):
        img = render_frame(np.random.default_rng(i), probe=("sector", "linear")[i % 2], anatomy="liver",
                           scene_seed=100 + i, banner="X")
        cv2.imwrite(str(raw / f"f{i}.png"), img)
        want.add(curate(img, CurateOptions()).image.tobytes())
    build(BuildConfig(text_policy="off", datasets=quick_datasets([raw.parent]), codec="png", val_fraction=0.0), tmp_path / "out",
          progress=False)
    got = {decode(mem["png"], "png").tobytes() for _, _, mem, _ in _samples(tmp_path / "out", None)}
    assert got == want


def test_splits_are_by_group_and_deterministic(demo_shards, demo_raw, tmp_path):
    groups = defaultdict(set)
    for _, _, _, meta in _samples(demo_shards, None):
        groups[meta["group"]].add(meta["split"])
    assert all(len(s) == 1 for s in groups.values())
    assert {"train", "val"} <= set().union(*groups.values())
    # a rebuild gives the same bytes
    cfg = BuildConfig(text_policy="off", datasets=quick_datasets([demo_raw]), shard_max_samples=12, val_fraction=0.1)
    build(cfg, tmp_path / "again", workers=1, progress=False)
    a, b = Manifest.load(demo_shards), Manifest.load(tmp_path / "again")
    assert [s["sha256"] for s in a.data["shards"]] == [s["sha256"] for s in b.data["shards"]]
    # every shard mixes datasets (global shuffle), at least where there are enough samples
    mixed = [len({meta["dataset"] for _, _, _, meta in ((None, None, None, json.loads(mem["json"]))
                                                         for _, mem in iter_shard(p))}) for p in a.shards("train")]
    assert max(mixed) > 1


def test_interrupted_build_resumes_byte_identical(demo_raw, tmp_path, monkeypatch):
    cfg = BuildConfig(text_policy="off", datasets=quick_datasets([demo_raw]), shard_max_samples=12)
    build(cfg, tmp_path / "clean", workers=1, progress=False)

    real = build_mod.write_shard
    calls = {"n": 0}

    def dying(path, samples):
        calls["n"] += 1
        if calls["n"] == 3:  # die in the middle of the third shard, leaving a partial temp file
            def partial():
                for i, s in enumerate(samples):
                    if i == 5:
                        raise KeyboardInterrupt("simulated kill while writing the third shard")
                    yield s
            return real(path, partial())
        return real(path, samples)

    monkeypatch.setattr(build_mod, "write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        build(cfg, tmp_path / "killed", workers=1, progress=False)
    assert not (tmp_path / "killed" / "manifest.json").exists()
    assert len(list((tmp_path / "killed").glob("*.tar"))) == 2  # finished shards only
    assert len(list((tmp_path / "killed").glob(".*.tmp"))) == 1  # the partial one, not under its name
    monkeypatch.setattr(build_mod, "write_shard", real)
    build(cfg, tmp_path / "killed", workers=1, progress=False)
    for f in sorted((tmp_path / "clean").iterdir()):
        assert f.read_bytes() == (tmp_path / "killed" / f.name).read_bytes(), f.name
    assert sorted(p.name for p in (tmp_path / "clean").iterdir()) == \
        sorted(p.name for p in (tmp_path / "killed").iterdir())


def test_privacy_nothing_identifying_leaks(tmp_path, caplog):
    """A distinctive patient name planted in DICOM tags, directory names and burned-in banners
    appears in no byte of the shareable outputs or the log, and banner rows are cropped."""
    from phantom import write_demo_corpus

    name = "ZYXWVUT^QUENTIN"
    raw = tmp_path / "raw"
    write_demo_corpus(raw, seed=3, scale=0.5, patient_name=name)
    assert any(name in str(p) for p in raw.rglob("*"))  # the plant is really there
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        build(BuildConfig(text_policy="off", datasets=quick_datasets([raw])), out, progress=False)
    p = run_py(["-m", "sharder.cli", "stats", str(out)])
    needles = [b"ZYXWVUT", b"zyxwvut", b"QUENTIN", b"Quentin", b"quentin"]
    for pat in SHAREABLE:
        for f in out.glob(pat):
            data = f.read_bytes()
            assert not any(n in data for n in needles), f.name
    assert not any(n.decode() in caplog.text + p.stdout + p.stderr for n in needles)
    # banner rows: every still from the PNG set was cropped below its banner (the top rows)
    from phantom import probe_geometry

    for _, _, mem, meta in _samples(out, None):
        if meta["dataset"] == "breast_png":
            h, w = meta["orig_hw"]
            assert meta["crop"][0] >= probe_geometry("linear", h, w).banner_rows - 1 or meta["crop"][0] > 20


def test_holdout_sets_stay_out_and_leaks_are_dropped(tmp_path):
    from phantom import render_frame

    root = tmp_path / "raw"
    (root / "pretrain_breast").mkdir(parents=True)
    (root / "busbra").mkdir()
    imgs = [render_frame(np.random.default_rng(i), anatomy=a, probe="linear", scene_seed=10 + i)
            for i, a in enumerate(["breast", "thyroid", "liver", "kidney"])]
    for i, img in enumerate(imgs):
        cv2.imwrite(str(root / "pretrain_breast" / f"p{i}.png"), img)
    cv2.imwrite(str(root / "busbra" / "held0.png"), imgs[0])  # leaked: same frame in both
    cv2.imwrite(str(root / "busbra" / "held1.jpg"), imgs[2], [cv2.IMWRITE_JPEG_QUALITY, 90])  # re-encoded
    cfg = BuildConfig(text_policy="off", datasets=quick_datasets([root], holdout=("busbra",)), val_fraction=0.0)
    m = build(cfg, tmp_path / "out", progress=False)
    assert m["datasets"]["busbra"]["written"] == 2
    assert m["datasets"]["pretrain_breast"]["written"] == 2
    dups = [json.loads(x) for x in (tmp_path / "out" / "duplicates.jsonl").read_text().splitlines()]
    assert sorted(d["kind"] for d in dups) == ["holdout_leak", "holdout_leak"]
    # the evidence of each leak drop: the identical PNG at 0, the JPEG re-encode within the bound
    assert sorted(d["distance"] for d in dups)[0] == 0
    assert all(0 <= d["distance"] <= cfg.holdout_leak_max_dist for d in dups)
    for _, _, _, meta in _samples(tmp_path / "out", "train"):
        assert meta["dataset"] != "busbra"
    assert {meta["dataset"] for *_, meta in _samples(tmp_path / "out", "holdout")} == {"busbra"}
    assert verify(tmp_path / "out", progress=False).ok


def test_verify_catches_tampering(demo_shards, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(demo_shards, bad)
    tar = sorted(bad.glob("train-*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF
    tar.write_bytes(bytes(data))
    m = json.loads((bad / "manifest.json").read_text())
    m["datasets"]["breast_png"]["written"] += 1
    (bad / "manifest.json").write_text(json.dumps(m))
    rep = verify(bad, progress=False)
    assert not rep.ok
    text = "\n".join(rep.errors)
    assert tar.name in text and "sha256" in text
    assert "breast_png" in text


def test_bad_config_fails_before_any_work(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("datasets:\n  - name: a\n    root: x\n    format: tiff_stack\n")
    with pytest.raises(ConfigError, match="format"):
        load_config(y)
    y.write_text("datasets:\n  - name: a\n    colour: blue\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(y)
    y.write_text("datasets:\n  - name: a\n    group: {rule: regex, pattern: 'no_group'}\n")
    with pytest.raises(ConfigError, match="capture group"):
        load_config(y)
    p = run_py(["-m", "sharder.cli", "build", "--config", str(y), "--out", str(tmp_path / "o")], check=False)
    assert p.returncode == 2 and "config error" in p.stderr and not (tmp_path / "o").exists()


def test_missing_root_is_reported_or_fatal(tmp_path, demo_raw):
    specs = [DatasetSpec(name="gone", root=str(tmp_path / "nope")), *quick_datasets([demo_raw])[:1]]
    m = build(BuildConfig(text_policy="off", datasets=specs), tmp_path / "o1", progress=False)
    assert m["datasets"]["gone"]["missing_root"] and m["totals"]["written"] > 0
    with pytest.raises(build_mod.BuildError, match="gone"):
        build(BuildConfig(text_policy="off", datasets=specs, strict=True), tmp_path / "o2", progress=False)


def test_cli_build_verify_stats_preview(tmp_path, demo_raw):
    out = tmp_path / "s"
    p = run_py(["-m", "sharder.cli", "-q", "build", str(demo_raw / "breast_png"), str(demo_raw / "kidney_mixed"),
                "--out", str(out)])
    assert "inputs" in p.stdout and "written" in p.stdout
    gate = json.loads((out / "manifest.json").read_text())["totals"]["text_gate"]
    assert BuildConfig().text_policy == "reject"  # the default: no flag, no config
    assert gate["checked"] > 0 and gate["rejected"] == gate["found"] and gate["cleaned"] == 0
    assert run_py(["-m", "sharder.cli", "-q", "verify", str(out)]).stdout.strip().endswith("0 problem(s)")
    assert "TOTAL" in run_py(["-m", "sharder.cli", "stats", str(out)]).stdout
    run_py(["-m", "sharder.cli", "preview", str(out), "--out", str(tmp_path / "sheet.png"), "-n", "12"])
    sheet = cv2.imread(str(tmp_path / "sheet.png"), cv2.IMREAD_GRAYSCALE)
    assert sheet is not None and sheet.std() > 10
    run_py(["-m", "sharder.cli", "preview", "--curation", str(demo_raw / "breast_png"), "--out",
            str(tmp_path / "cur.png"), "-n", "3"])
    cur = cv2.imread(str(tmp_path / "cur.png"))
    assert cur.shape == (3 * 256, 512, 3)
    # the crop box is drawn in orange on the 'before' side
    assert ((cur[..., 2] > 200) & (cur[..., 1] > 150) & (cur[..., 0] < 80)).sum() > 100
    (out / "train-000000.tar.idx").unlink()
    run_py(["-m", "sharder.cli", "index", str(out)])
    assert run_py(["-m", "sharder.cli", "-q", "verify", str(out)]).returncode == 0


def test_kill_during_extraction_resumes_and_worker_count_does_not_matter(demo_raw, tmp_path, monkeypatch, caplog):
    """A kill in the middle of an input: the re-run keeps every finished input, redoes the
    half-done one, and the output equals a clean build made with a different worker count."""
    cfg = BuildConfig(text_policy="off", datasets=quick_datasets([demo_raw]), shard_max_samples=12)
    build(cfg, tmp_path / "clean", workers=2, progress=False)

    real = build_mod._Extractor._one_input
    calls = {"n": 0}

    def dying(self, i, spec, grouper, rel, binf, recf):
        calls["n"] += 1
        if calls["n"] == 30:
            recf.write('{"t": "f", "i": %d, "f": 0, "half": true}\n' % i)  # half-written input
            raise KeyboardInterrupt("simulated kill during extraction")
        return real(self, i, spec, grouper, rel, binf, recf)

    monkeypatch.setattr(build_mod._Extractor, "_one_input", dying)
    with pytest.raises(KeyboardInterrupt):
        build(cfg, tmp_path / "killed", workers=1, progress=False, keep_work=True)
    monkeypatch.setattr(build_mod._Extractor, "_one_input", real)
    calls["n"] = 0
    with caplog.at_level(logging.INFO):
        build(cfg, tmp_path / "killed", workers=1, progress=False)
    assert "29 of" in caplog.text  # resumed after the 29 finished inputs
    for f in sorted((tmp_path / "clean").iterdir()):
        assert f.read_bytes() == (tmp_path / "killed" / f.name).read_bytes(), f.name


def test_frame_step_is_the_build_chain_and_times_each_stage(tmp_path):
    """The benchmark's per-stage timings come from the build's own step: a StageClock sees every
    stage, and each Sample carries the encoded bytes, hashes and sums of its curated image."""
    from phantom import render_frame
    from sharder.dedup import phash64, pixel_hash
    from sharder.frame_step import STAGES, FrameStep, Sample, StageClock, pixel_sums
    from sharder.frames import ReaderOptions

    path = tmp_path / "f.png"
    img = render_frame(np.random.default_rng(0), probe="sector", anatomy="liver", scene_seed=1, banner="X")
    cv2.imwrite(str(path), img)
    clock = StageClock()
    step = FrameStep("image", CurateOptions(), codec="png", clock=clock)
    (smp,) = step.samples(path, ReaderOptions())
    assert isinstance(smp, Sample) and step.frames == 1 and step.gate.counts["checked"] == 0  # gate off
    assert np.array_equal(smp.cur.image, curate(img, CurateOptions()).image)
    assert np.array_equal(decode(smp.data, "png"), smp.cur.image)
    assert (smp.xh, smp.ph, smp.sums) == (pixel_hash(smp.cur.image), phash64(smp.cur.image),
                                          pixel_sums(smp.cur.image))
    assert all(clock.seconds[k] > 0 for k in STAGES)


def test_account_reports_every_input_once():
    """manifest.account: an input is used, rejected or unaccounted (a bug), per dataset and in
    total; frames are written + duplicates + rejected frames; the text gate sums per dataset."""
    from collections import Counter
    from types import SimpleNamespace

    from sharder.manifest import account, accounting_line

    spec = lambda name, **kw: SimpleNamespace(name=name, anatomy="liver", holdout=False,  # noqa: E731
                                              text_policy=None, **kw)
    cfg = SimpleNamespace(datasets=[spec("a"), spec("b")], text_policy="reject")
    inputs = [(0, 0, "x.png"), (1, 0, "y.png"), (2, 1, "z.dcm"), (3, 1, "w.dcm")]
    rejects = [{"dataset": "a", "path": "y.png", "scope": "input", "reason": "truncated"},
               {"dataset": "b", "path": "z.dcm", "scope": "frame", "reason": "text_found"}]
    gate = [{"dataset": "b", "checked": 3, "found": 1, "cleaned": 0, "ms": 30.0}]
    counts = {"a": Counter(written=2), "b": Counter(written=4, duplicates=1)}
    datasets, totals = account(cfg, inputs, {0, 2}, counts, rejects, gate, missing=[])
    assert datasets["a"]["inputs_used"] == 1 and datasets["a"]["rejected_inputs"] == 1
    assert datasets["b"]["inputs_unaccounted"] == 1  # w.dcm: neither used nor reported
    assert datasets["b"]["frames"] == 4 + 1 + 1 and datasets["b"]["rejected"] == 1
    assert datasets["b"]["text_gate"] == {"policy": "reject", "checked": 3, "found": 1, "cleaned": 0,
                                          "rejected": 1, "ms_per_frame": 10.0}
    assert totals["inputs"] == 4 and totals["inputs_unaccounted"] == 1 and totals["frames"] == 2 + 6
    assert totals["rejected_by_reason"] == {"text_found": 1, "truncated": 1}
    assert "rejected inputs 1 (reasons: text_found 1, truncated 1)" in accounting_line(totals)
