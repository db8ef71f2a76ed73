"""``usf-shard build``: raw collections -> verified, deduplicated, privacy-safe shards.

Stages (each streams; memory is bounded by the frame being processed plus small per-sample
records, never by whole images of the corpus):

1. **plan**     walk the dataset roots (sorted) into ``_work/inputs.tsv``.
2. **extract**  N worker processes pull the next input index from a shared counter (so a few
                huge volumes do not leave one worker busy while the others idle) and run the
                per-frame step on it (sharder/frame_step.py: read -> crop -> curate -> text
                gate -> encode -> hashes); encoded frames go to ``_work/part-rRwW.bin``, frame
                records, rejects and an "input done" marker to ``part-rRwW.jsonl``. A re-run
                after a kill truncates each part to its last done marker and processes only
                the inputs not yet done, in new parts (run R+1).
3. **dedup**    one pass in input order (independent of N): held-out datasets first (their
                hashes guard against leakage), then exact (pixel hash) and near (64-bit pHash,
                multi-index Hamming search) duplicates; first seen wins. Split by salted group.
4. **write**    survivors in a global seeded order, cut into shards per split, written in
                parallel to temporary names and renamed; a shard that already exists under its
                final name (a resumed build) is kept. Then ``.idx``, reports, and the manifest
                with its accounting (sharder/manifest.py).

The output is a pure function of (inputs, config): a killed and resumed build is byte-identical
to an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import shutil
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from tqdm import tqdm

from . import __version__
from .config import BuildConfig, DatasetSpec
from .curate import CurateOptions
from .dedup import FirstSeen, NearDupIndex, phash_hex
from .frame_step import FrameRejected, FrameStep, Sample
from .frames import InputRejected, ReaderOptions
from .keys import order_key, salted_hex, unit_interval
from .manifest import account, accounting_line, new_manifest
from .readers import detect_format
from .shards import file_sha256, write_shard

log = logging.getLogger("usf_shard")
WORK = "_work"


class BuildError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- plan

def _walk(spec: DatasetSpec) -> list[str]:
    root = Path(spec.root)
    found: set[str] = set()
    for g in spec.globs:
        for p in root.glob(g):
            rel = p.relative_to(root)
            if any(part.startswith(".") for part in rel.parts):
                continue  # hidden files (.DS_Store, our own temp files) are not inputs
            if p.is_file() or (p.exists() and not p.is_dir()):
                found.add(rel.as_posix())
            elif p.is_symlink():  # broken link: still an input, rejected later with a reason
                found.add(rel.as_posix())
    return sorted(found)


def plan_inputs(cfg: BuildConfig, work: Path) -> tuple[int, list[str]]:
    """Writes ``inputs.tsv`` (input index, dataset index, relative path); returns the count and
    the names of datasets whose root is missing."""
    missing: list[str] = []
    n = 0
    with open(work / "inputs.tsv", "w") as f:
        for d, spec in enumerate(cfg.datasets):
            if not spec.root or not Path(spec.root).is_dir():
                missing.append(spec.name)
                continue
            for rel in _walk(spec):
                if "\t" in rel or "\n" in rel:
                    rel = rel.replace("\t", " ").replace("\n", " ")
                f.write(f"{n}\t{d}\t{rel}\n")
                n += 1
    return n, missing


def _line_offsets(path: Path) -> np.ndarray:
    """Byte offset of each line of a work file (inputs.tsv, survivors.jsonl): 8 bytes per line
    held, not the lines themselves."""
    offs, pos = [], 0
    with open(path, "rb") as f:
        for line in f:
            offs.append(pos)
            pos += len(line)
    return np.asarray(offs, dtype=np.int64)


def _read_input(f, offsets: np.ndarray, i: int) -> tuple[int, str]:
    f.seek(int(offsets[i]))
    _, d, rel = f.readline().decode().rstrip("\n").split("\t", 2)
    return int(d), rel


def _planned(work: Path) -> Iterator[tuple[int, int, str]]:
    """(input index, dataset index, relative path) of every planned input, from inputs.tsv."""
    with open(work / "inputs.tsv") as f:
        for line in f:
            i, d, rel = line.rstrip("\n").split("\t", 2)
            yield int(i), int(d), rel


def _recover(work: Path) -> tuple[set[int], int]:
    """After a kill: truncate every part to its last "done" marker (dropping a half-processed
    input) and return (inputs done, next run number)."""
    done: set[int] = set()
    runs = [-1]
    for part in sorted(work.glob("part-r*w*.jsonl")):
        runs.append(int(part.stem[len("part-r"):].split("w")[0]))
        keep = 0
        with open(part, "rb") as f:
            pos = 0
            for line in f:
                pos += len(line)
                if line.startswith(b'{"t": "d"'):
                    done.add(json.loads(line)["i"])
                    keep = pos
        with open(part, "r+b") as f:
            f.truncate(keep)
    return done, max(runs) + 1


# ----------------------------------------------------------------------------- extract
@dataclass
class _Group:
    """Resolves an input's group id (patient/study) per the dataset's rule; returns the raw id,
    which is salted-hashed before it is stored anywhere."""

    spec: DatasetSpec
    _csv: dict | None = None
    _re: object = None

    def __call__(self, rel: str, hint: str | None) -> str:
        g = self.spec.group
        if g.rule == "file":
            return rel
        if g.rule == "parent":
            return str(Path(rel).parent)
        if g.rule == "dicom":
            return hint or rel
        if g.rule == "regex":
            import re

            self._re = self._re or re.compile(g.pattern)
            m = self._re.search(rel)
            return m.group(1) if m else rel
        if g.rule == "csv":
            if self._csv is None:
                import csv

                with open(g.csv, newline="") as f:
                    self._csv = {r[g.path_column]: r[g.group_column] for r in csv.DictReader(f)}
            return self._csv.get(rel, rel)
        # auto: a DICOM study id when present, else the folder the file lives in
        if hint:
            return hint
        parent = str(Path(rel).parent)
        return rel if parent == "." else parent


class _Extractor:
    """Runs stage 2 for one worker's share of the inputs."""

    def __init__(self, cfg: BuildConfig, work: Path, part: str, offsets: np.ndarray, done: set[int],
                 counter):
        self.cfg, self.work, self.part, self.offsets, self.done = cfg, work, part, offsets, done
        self.counter = counter  # shared [next input, inputs finished, frames] (progress + scheduling)
        self.groups = [_Group(s) for s in cfg.datasets]

    def _reject(self, recf, dataset: str, rel: str, frame, reason: str, detail: str,
                scope: str = "input") -> None:
        """scope "input": the file (or its remainder after ``frame`` good frames) is unusable;
        scope "frame": one decoded frame was dropped by curation (counts in ``rejected``)."""
        recf.write(json.dumps({"t": "r", "dataset": dataset, "path": rel, "frame": frame, "scope": scope,
                              "reason": reason, "detail": detail}) + "\n")
        log.debug("rejected %s/%s frame=%s: %s", dataset, rel, frame, reason)

    def _next(self) -> int:
        with self.counter.get_lock():
            i = self.counter[0]
            self.counter[0] += 1
        return i

    def run(self) -> None:
        cfg, n = self.cfg, len(self.offsets)
        with open(self.work / f"part-{self.part}.bin", "wb") as binf, \
                open(self.work / f"part-{self.part}.jsonl", "w") as recf, \
                open(self.work / "inputs.tsv", "rb") as inputs:
            while (i := self._next()) < n:
                nframes = 0
                if i not in self.done:
                    d, rel = _read_input(inputs, self.offsets, i)
                    nframes = self._one_input(i, cfg.datasets[d], self.groups[d], rel, binf, recf)
                    binf.flush()  # the frames' bytes are on disk before their input counts as done
                    recf.write(f'{{"t": "d", "i": {i}}}\n')
                    recf.flush()
                with self.counter.get_lock():
                    self.counter[1] += 1
                    self.counter[2] += nframes

    def _write_sample(self, i: int, spec: DatasetSpec, grouper: _Group, rel: str, digest: str, source: str,
                      smp: Sample, binf, recf) -> None:
        """The encoded frame into the part's .bin, its record into the part's .jsonl. The key of
        region 0 is the key a single-image frame always had (dual view: region 1 is keyed apart)."""
        cfg, frame, cur = self.cfg, smp.frame, smp.cur
        group = salted_hex(cfg.salt, "group", spec.name, grouper(rel, frame.group_hint))
        parts = (spec.name, digest, frame.axis, frame.index) + ((f"region{smp.region}",) if smp.region else ())
        key = salted_hex(cfg.salt, "key", *parts)
        off = binf.tell()
        binf.write(smp.data)
        meta = {"dataset": spec.name, "anatomy": spec.anatomy, "split": None,
                "group": group, "source": source, "frame": int(frame.index),
                "axis": frame.axis, "orig_hw": [int(s) for s in frame.pixels.shape[:2]],
                "crop": [int(c) for c in cur.crop], "ops": list(cur.ops),
                "phash": phash_hex(smp.ph)}
        if smp.region:
            meta["region"] = smp.region
        psum, psq, npix = smp.sums
        recf.write(json.dumps({"t": "f", "i": i, "f": [smp.seq, smp.region],
                               "key": key, "off": off, "len": len(smp.data),
                               "xh": smp.xh, "ph": smp.ph, "meta": meta,
                               "s": psum, "ss": psq, "n": npix}) + "\n")

    def _one_input(self, i: int, spec: DatasetSpec, grouper: _Group, rel: str, binf, recf) -> int:
        """Extracts one input: its samples and rejects (and the text gate's counts) go to the
        part's files; returns the number of frames its reader yielded."""
        cfg = self.cfg
        path = Path(spec.root) / rel
        try:
            size = path.stat().st_size
            if size == 0:
                raise InputRejected("empty_file", "the file has zero bytes")
            if size > cfg.max_input_bytes:
                raise InputRejected("too_large", f"{size} bytes exceeds max_input_bytes")
            fmt = spec.format if spec.format != "auto" else detect_format(path)
            if fmt is None:
                raise InputRejected("unknown_format", "not an image, DICOM, volume or video")
            digest = file_sha256(path)
        except InputRejected as e:
            self._reject(recf, spec.name, rel, None, e.reason, e.detail)
            return 0
        except OSError as e:
            self._reject(recf, spec.name, rel, None, "unreadable", e.strerror or type(e).__name__)
            return 0

        source = salted_hex(cfg.salt, "source", digest)
        step = FrameStep(fmt, _curate_options(spec, cfg), cfg.codec, cfg.jpeg_quality,
                         spec.text_policy or cfg.text_policy, cfg.text_check_every)
        try:
            for smp in step.samples(path, _reader_options(spec, cfg)):
                if isinstance(smp, FrameRejected):
                    self._reject(recf, spec.name, rel, smp.seq, smp.error.reason, smp.error.detail, scope="frame")
                else:
                    self._write_sample(i, spec, grouper, rel, digest, source, smp, binf, recf)
        except InputRejected as e:
            # all frames yielded before the failure are kept; the input is reported either way
            n = step.frames
            self._reject(recf, spec.name, rel, None if n == 0 else n, e.reason,
                         e.detail if n == 0 else f"{e.detail} (after {n} good frames)")
        except Exception as e:  # a reader bug must not stop a 370k-frame build
            n = step.frames
            self._reject(recf, spec.name, rel, None if n == 0 else n, "reader_error",
                         f"{type(e).__name__} while decoding")
        else:
            if step.frames == 0:
                self._reject(recf, spec.name, rel, None, "no_frames", "the file holds no frames")
        gate = step.gate
        if gate.policy != "off":
            recf.write(json.dumps({"t": "g", "i": i, "dataset": spec.name, **{k: gate.counts[k] for k in
                                   ("checked", "found", "cleaned")}, "ms": round(gate.seconds * 1000, 3)}) + "\n")
        return step.frames


def _reader_options(spec: DatasetSpec, cfg: BuildConfig) -> ReaderOptions:
    return ReaderOptions(frame_stride=spec.frame_stride, max_frames=spec.max_frames,
                         volume_axes=tuple(spec.volume_axes), slice_stride=spec.slice_stride,
                         max_pixels=cfg.max_pixels)


def _curate_options(spec: DatasetSpec, cfg: BuildConfig) -> CurateOptions:
    return CurateOptions(crop_mode=spec.crop_mode, colour_policy=spec.colour_policy,
                         deannotate=spec.deannotate, short_side=cfg.short_side, min_side=cfg.min_side)


@contextmanager
def one_cv2_thread() -> Iterator[None]:
    """OpenCV single-threaded for the block. The extract loop's parallelism is one process per
    worker; OpenCV's own thread pool on top of it (one thread per core, per worker) oversubscribes
    the cores and costs more in spin-up and contention than it gives on frame-sized calls:
    measured on 2 cores, 2 workers took 3.5 s with it and 1.5 s without (1 worker: 2.3 s vs 2.1 s).
    Set in the PARENT around the fork: cv2.setNumThreads in a forked child joins pool threads
    that only exist in the parent, and hangs."""
    n = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(n)


def _extract_worker(cfg, work, part, offsets, done, counter):
    logging.getLogger("usf_shard").setLevel(logging.WARNING)
    _Extractor(cfg, work, part, offsets, done, counter).run()


def extract(cfg: BuildConfig, work: Path, workers: int, n_inputs: int, progress: bool) -> None:
    done, run = _recover(work)
    if len(done) == n_inputs and n_inputs:
        return
    if done:
        log.info("resuming: %d of %d inputs already extracted", len(done), n_inputs)
    offsets = _line_offsets(work / "inputs.tsv")
    ctx = mp.get_context("fork")
    counter = ctx.Array("q", 3)
    bar = tqdm(total=n_inputs, desc="extract", unit="input", disable=not progress, smoothing=0.1)
    t0 = time.time()

    def tick():
        bar.n = counter[1]
        bar.set_postfix_str(f"{counter[2]} frames, {counter[2] / max(time.time() - t0, 1e-6):.0f} frames/s")
        bar.refresh()

    with one_cv2_thread():  # forked workers inherit it
        if workers == 1:
            _Extractor(cfg, work, f"r{run}w0", offsets, done, counter).run()
        else:
            procs = [ctx.Process(target=_extract_worker, args=(cfg, work, f"r{run}w{w}", offsets, done, counter),
                                 daemon=True) for w in range(workers)]
            for p in procs:
                p.start()
            while alive := [p.sentinel for p in procs if p.is_alive()]:
                tick()
                mp_connection.wait(alive, timeout=0.5)  # returns as soon as a worker exits
            for p in procs:
                p.join()
            bad = [w for w, p in enumerate(procs) if p.exitcode != 0]
            if bad:
                raise BuildError(f"extract worker(s) {bad} died (exit codes "
                                 f"{[procs[w].exitcode for w in bad]}); re-run to resume")
    tick()
    bar.close()


# ----------------------------------------------------------------------------- dedup + split
def _parts(work: Path) -> list[str]:
    return sorted(p.stem[len("part-"):] for p in work.glob("part-r*w*.jsonl"))


def _entries(work: Path, part: str, kind: str) -> Iterator[dict]:
    tag = f'{{"t": "{kind}"'.encode()
    with open(work / f"part-{part}.jsonl", "rb") as f:
        for line in f:
            if line.startswith(tag):
                yield json.loads(line)


def _records(work: Path) -> Iterator[tuple[str, dict]]:
    """All frame records in input order, whichever part (run, worker) made them: each part is
    sorted by input index, so a k-way merge gives an order independent of the worker count."""
    def one(part):
        for r in _entries(work, part, "f"):
            yield (r["i"], r["f"]), part, r
    for _, part, r in heapq.merge(*(one(p) for p in _parts(work)), key=lambda t: t[0]):
        yield part, r


@dataclass
class _Survivor:
    order: bytes
    split: str
    worker: str  # the part (run, worker) whose .bin holds the encoded frame
    off: int
    length: int
    line: int  # line number in survivors.jsonl


def dedup_and_split(cfg: BuildConfig, work: Path):
    """Stage 3. Returns (survivors, per-dataset counters, pixel-stat sums, used input indices);
    writes ``survivors.jsonl`` and ``duplicates.jsonl`` into the work dir."""
    holdout = {s.name for s in cfg.datasets if s.holdout}
    counts: dict[str, Counter] = defaultdict(Counter)
    hold_exact: dict[str, str] = {}
    hold_near = NearDupIndex(cfg.holdout_leak_max_dist)
    seen = FirstSeen(cfg.dedup_exact, cfg.near_max_dist if cfg.dedup_near else None)
    survivors: list[_Survivor] = []
    used: set[int] = set()  # input indices with at least one frame written or deduplicated
    stats = np.zeros(3)  # sum, sumsq, n over written pretraining pixels (0..1 scale)
    with open(work / "survivors.jsonl", "w") as surv, open(work / "duplicates.jsonl", "w") as dupf:
        def keep(w, r, split):
            r["meta"]["split"] = split
            survivors.append(_Survivor(order_key(cfg.seed, r["key"]), split, w, r["off"], r["len"],
                                       len(survivors)))
            surv.write(json.dumps({"key": r["key"], "meta": r["meta"]}) + "\n")
            counts[r["meta"]["dataset"]]["written"] += 1
            used.add(r["i"])

        def drop(r, dup_of, kind, dist):
            dupf.write(json.dumps({"key": r["key"], "dataset": r["meta"]["dataset"], "dup_of": dup_of,
                                   "kind": kind, "distance": dist}) + "\n")
            counts[r["meta"]["dataset"]]["duplicates"] += 1
            used.add(r["i"])

        # pass 1: held-out (downstream) datasets, written to the "holdout" split untouched
        for w, r in _records(work):
            if r["meta"]["dataset"] in holdout:
                hold_exact.setdefault(r["xh"], r["key"])
                if hold_near.query(r["ph"]) is None:
                    hold_near.add(r["ph"], r["key"])
                keep(w, r, "holdout")
        # pass 2: pretraining datasets
        for w, r in _records(work):
            ds = r["meta"]["dataset"]
            if ds in holdout:
                continue
            if r["xh"] in hold_exact:
                drop(r, hold_exact[r["xh"]], "holdout_leak", 0)
                continue
            if len(hold_near):
                hit = hold_near.nearest(r["ph"])
                if hit is not None:  # (key, Hamming distance): the distance is audit evidence
                    drop(r, hit[0], "holdout_leak", hit[1])
                    continue
            hit = seen.check(r["key"], r["xh"], r["ph"])
            if hit is not None:  # (kept key, "exact" | "near", Hamming distance)
                drop(r, *hit)
                continue
            split = "val" if unit_interval(cfg.seed, "split", ds, r["meta"]["group"]) < cfg.val_fraction \
                else "train"
            keep(w, r, split)
            stats += (r["s"], r["ss"], r["n"])
    return survivors, counts, stats, used


# ----------------------------------------------------------------------------- write
def plan_shards(cfg: BuildConfig, survivors: list[_Survivor]) -> list[dict]:
    """Cuts each split, in global seeded order, into shards of at most ``shard_max_samples``
    samples and about ``shard_max_bytes`` bytes."""
    shards = []
    for split in ("train", "val", "holdout"):
        items = sorted((s for s in survivors if s.split == split), key=lambda s: s.order)
        cur, size = [], 0
        for s in items:
            if cur and (len(cur) >= cfg.shard_max_samples or size + s.length > cfg.shard_max_bytes):
                shards.append({"name": f"{split}-{sum(x['split'] == split for x in shards):06d}.tar",
                               "split": split, "items": cur})
                cur, size = [], 0
            cur.append((s.worker, s.off, s.length, s.line))
            size += s.length + 1536  # image + json + tar headers, roughly
        if cur:
            shards.append({"name": f"{split}-{sum(x['split'] == split for x in shards):06d}.tar",
                           "split": split, "items": cur})
    return shards


def _write_one(out: Path, work: Path, codec: str, shard: dict, line_offs: np.ndarray) -> dict:
    path = out / shard["name"]
    if path.exists() and Path(f"{path}.idx").exists():  # finished by an earlier (killed) run
        return {"samples": len(shard["items"]), "bytes": path.stat().st_size, "sha256": file_sha256(path)}

    def samples():
        bins: dict[int, object] = {}
        with open(work / "survivors.jsonl", "rb") as sv:
            for w, off, length, line in shard["items"]:
                sv.seek(line_offs[line])
                rec = json.loads(sv.readline())
                b = bins.get(w) or bins.setdefault(w, open(work / f"part-{w}.bin", "rb"))
                b.seek(off)
                yield rec["key"], {codec: b.read(length),
                                   "json": json.dumps(rec["meta"], sort_keys=True).encode()}
        for b in bins.values():
            b.close()

    return write_shard(path, samples())


def write_shards(out: Path, work: Path, cfg: BuildConfig, shards: list[dict], workers: int,
                 progress: bool) -> list[dict]:
    line_offs = _line_offsets(work / "survivors.jsonl")
    results: list[dict] = []
    bar = tqdm(total=len(shards), desc="write", unit="shard", disable=not progress)
    if workers == 1:
        for s in shards:
            results.append(_write_one(out, work, cfg.codec, s, line_offs))
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            futs = [ex.submit(_write_one, out, work, cfg.codec, s, line_offs) for s in shards]
            for f in futs:
                results.append(f.result())
                bar.update()
    bar.close()
    return [{"name": s["name"], "split": s["split"], **r} for s, r in zip(shards, results)]


# ----------------------------------------------------------------------------- driver
def _fingerprint(cfg: BuildConfig) -> str:
    d = json.dumps({"cfg": cfg.resolved(), "roots": [s.root for s in cfg.datasets],
                    "tool": __version__}, sort_keys=True)
    return hashlib.sha256(d.encode()).hexdigest()


def _rejects(work: Path) -> list[dict]:
    rows = [{k: v for k, v in r.items() if k != "t"} for part in _parts(work) for r in _entries(work, part, "r")]
    return sorted(rows, key=lambda r: (r["dataset"], r["path"], -1 if r["frame"] is None else r["frame"],
                                       r["reason"]))


def build(cfg: BuildConfig, out: str | Path, workers: int = 1, progress: bool = True,
          keep_work: bool = False) -> dict:
    """Runs the whole build into ``out``; returns the manifest dict."""
    out = Path(out)
    work = _work_dir(cfg, out)
    if not cfg.datasets:
        raise BuildError("no datasets: give input directories or a config with datasets")
    _check_text_gate(cfg)
    n_inputs, missing = _plan(cfg, work, out)
    extract(cfg, work, workers, n_inputs, progress)
    survivors, counts, stats, used = dedup_and_split(cfg, work)
    shards = plan_shards(cfg, survivors)
    _remove_stale_shards(out, shards)
    shard_rows = write_shards(out, work, cfg, shards, workers, progress)
    manifest = _write_reports(cfg, work, out, shard_rows, counts, stats, used, missing)
    if not keep_work:
        shutil.rmtree(work)
    totals = manifest["totals"]
    if totals["inputs_unaccounted"]:
        raise BuildError(f"{totals['inputs_unaccounted']} input(s) neither used nor reported: this is a bug")
    log.info("accounting: %s", accounting_line(totals))
    return manifest


def _work_dir(cfg: BuildConfig, out: Path) -> Path:
    """``out/_work``, kept from an interrupted build of the same config (to resume), else new."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / WORK
    fp = _fingerprint(cfg)
    if work.exists() and (work / "fingerprint").exists() and (work / "fingerprint").read_text() != fp:
        log.info("config or inputs changed since the interrupted build: starting over")
        shutil.rmtree(work)
        for p in out.glob("*.tar*"):
            p.unlink()
    work.mkdir(exist_ok=True)
    (work / "fingerprint").write_text(fp)
    return work


def _check_text_gate(cfg: BuildConfig) -> None:
    """Fail before any work, not as one reader_error per input in the workers, when a dataset
    has a text policy and the detector is not installed."""
    gated = sorted(s.name for s in cfg.datasets if (s.text_policy or cfg.text_policy) != "off")
    if gated:
        from .textgate import TextGateUnavailable, model_path

        try:
            model_path()
        except TextGateUnavailable as e:
            raise BuildError(f"datasets {gated} have a text_policy: {e}") from None


def _plan(cfg: BuildConfig, work: Path, out: Path) -> tuple[int, list[str]]:
    """Stage 1 (see :func:`plan_inputs`); an interrupted build whose input files changed since
    extracts again. Returns (inputs, datasets whose root is missing)."""
    n_inputs, missing = plan_inputs(cfg, work)
    listing = hashlib.sha256((work / "inputs.tsv").read_bytes()).hexdigest()
    seen = work / "inputs.sha256"
    if seen.exists() and seen.read_text() != listing:  # files added/removed since the kill
        log.info("the input files changed since the interrupted build: extracting again")
        for p in [*work.glob("part-*"), *out.glob("*.tar"), *out.glob("*.tar.idx")]:
            p.unlink()
    seen.write_text(listing)
    for name in missing:
        if cfg.strict:
            raise BuildError(f"dataset {name}: root is missing (strict mode)")
        log.warning("dataset %s: root not found, skipped", name)
    log.info("planned %d inputs from %d datasets", n_inputs, len(cfg.datasets) - len(missing))
    return n_inputs, missing


def _remove_stale_shards(out: Path, shards: list[dict]) -> None:
    """Shards of an older, different build in the same dir go (with their .idx)."""
    keep_names = {s["name"] for s in shards}
    for p in out.glob("*.tar"):
        if p.name not in keep_names:
            p.unlink()
            Path(f"{p}.idx").unlink(missing_ok=True)


def _write_reports(cfg: BuildConfig, work: Path, out: Path, shard_rows: list[dict], counts: dict,
                   stats: np.ndarray, used: set[int], missing: list[str]) -> dict:
    """rejects.jsonl, duplicates.jsonl and manifest.json (the accounting: sharder.manifest),
    each written atomically; returns the manifest."""
    rejects = _rejects(work)
    dups = [json.loads(x) for x in (work / "duplicates.jsonl").read_text().splitlines() if x]
    gate_records = (g for part in _parts(work) for g in _entries(work, part, "g"))
    datasets, totals = account(cfg, _planned(work), used, counts, rejects, gate_records, missing)
    manifest = new_manifest(cfg, __version__, shard_rows, datasets, totals, tuple(stats))
    _atomic_write(out / "rejects.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects))
    _atomic_write(out / "duplicates.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in dups))
    _atomic_write(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
