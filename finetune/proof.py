"""Proof that pretraining helps: the same encoder architecture, random init vs our MAE
pretraining, each linear-probed (frozen) and fine-tuned on a labelled downstream task whose
patients are split into train and test groups.

    python -m finetune.proof --labels DIR/labels.csv --export EXPORT_DIR --output-dir OUT \\
        [--methods linear_probe,finetune] [--recon GRID.png]

Writes ``OUT/proof.json`` (a list of {method, init, accuracy, f1, auc, ...}) and prints the table.
The downstream set must be held out of pretraining (``usf-shard build --holdout NAME``).

Images are curated with the sharder's own :func:`sharder.curate.curate` first (crop to the scan
region, short side 256), so the downstream frames look like the pretraining frames (no banners,
side bars or black margins); ``--no-curate`` feeds the files as they are. Both inits go through
exactly the same runner (:func:`finetune.runner.finetune`), data, split, seed and schedule; only
the encoder weights differ. ``--shards`` checks that the task never reached pretraining.

Settings, measured on the phantom lesion task on 2 CPU cores (finetune.proof defaults):
- linear probe: frozen encoder, mean of the patch tokens -> BatchNorm -> linear head (MAE's
  linprobe) trained on the eval view (``probe_augment`` False): with the runner's crop + flip the
  head fits jittered views of frozen features it is never tested on, and the pretrained probe fell
  from 0.70 to 0.57 (random init 0.52 -> 0.58) on the same split. ``probe_blr`` 0.4 (lr 0.05):
  the runner's default 0.05 left the head underfit (-0.02 to -0.05 accuracy).
- fine-tune: the runner's recipe (layer decay, drop path, label smoothing) without RandAugment and
  random erasing and with ``finetune_crop_min`` 0.5 (both erase or crop out the lesion):
  with them, pretrained fine-tuning reached 0.58 instead of 0.75 and random init 0.46 vs 0.44-0.49.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Literal

from runconfig import add_arguments, config, parse
from trainer.precision import PRECISIONS

METHODS = ("linear_probe", "finetune")
INITS = ("random", "pretrained")


@config
class ProofConfig:
    labels: str  # CSV with path,label,patient (path relative to the CSV)
    export: str  # the pretrained encoder (export dir)
    output_dir: str
    methods: str = "linear_probe,finetune"  # comma-separated subset of METHODS
    splits: int = 1  # patient splits (seeds seed..seed+splits-1); cells report the mean (and std)
    test_fraction: float = 0.3  # of patients
    curate: bool = True  # crop to the scan region with sharder.curate (as pretraining frames are)
    probe_epochs: int = 20
    probe_blr: float = 0.4  # lr 0.05 at batch 32: the runner default (0.05) leaves the head underfit
    probe_augment: bool = False  # see the module docstring
    probe_crop_min: float = 0.9  # with --probe-augment
    finetune_epochs: int = 8
    finetune_blr: float = 5e-3
    finetune_crop_min: float = 0.5
    finetune_randaug: int = 0  # RandAugment ops (the runner's default 2 x magnitude 9 hurts both inits here)
    finetune_reprob: float = 0.0  # random erasing (can erase the lesion)
    batch_size: int = 32
    seed: int = 0
    workers: int = 0
    recon: str | None = None  # reconstruction grid to name under the table
    shards: str | None = None  # pretraining shard dir: check the task was held out of it
    holdout_name: str = "lesions_holdout"  # the task's dataset name in that build
    precision: Literal[PRECISIONS] = "auto"  # the runner's rule: bf16 where it runs natively, else fp32


def load_task(csv_path: str | Path, curate: bool = True):
    """-> (records, class names) from a ``path,label,patient`` CSV; labels sorted by name.

    With ``curate`` every image is read and curated (scan-region crop, short side 256) and the
    record carries the pixels in memory (its path stays for reference)."""
    from finetune.tasks import Record

    csv_path = Path(csv_path)
    rows = list(csv.DictReader(csv_path.open(newline="")))
    if not rows or not {"path", "label", "patient"} <= set(rows[0]):
        raise ValueError(f"{csv_path}: expected columns path,label,patient")
    names = sorted({r["label"] for r in rows})
    recs = []
    for r in rows:
        path = csv_path.parent / r["path"]
        image = None
        if curate:
            from sharder.curate import curate as curate_frame
            from sharder.intensity import read_gray_u8

            image = curate_frame(read_gray_u8(path)).image
        recs.append(Record(path=path, label=names.index(r["label"]), group=r["patient"], image=image))
    return recs, names


def check_held_out(shards: str | Path, dataset: str) -> dict:
    """Asserts that ``dataset`` was kept out of pretraining by ``usf-shard build --holdout``: the
    manifest marks it held out, and no train/val sample comes from it. Returns its manifest entry."""
    from sharder.manifest import Manifest
    from sharder.shards import iter_shard

    man = Manifest.load(shards)
    entry = man.data.get("datasets", {}).get(dataset)
    if entry is None or not entry.get("holdout"):
        raise AssertionError(f"{shards}: dataset {dataset!r} is not marked held out in the manifest")
    for split in ("train", "val"):
        for tar in man.shards(split):
            for key, members in iter_shard(tar):
                if "json" in members and json.loads(members["json"]).get("dataset") == dataset:
                    raise AssertionError(f"{tar.name}: {key}.json comes from held-out {dataset!r}")
    return entry


def split_task(recs, test_fraction: float, seed: int):
    """Patients (groups) split into train and test; no patient straddles the two."""
    from finetune.tasks import group_split

    train, test = group_split(recs, test_fraction, seed)
    if {r.group for r in train} & {r.group for r in test}:
        raise AssertionError("a patient is in both train and test")
    return train, test


def finetune_config(cfg: ProofConfig, method: str, init: str, output_dir: str | None = None,
                    seed: int | None = None):
    """The runner config of one cell: only ``init`` differs between random and pretrained."""
    from finetune.config import FinetuneConfig

    probe = method == "linear_probe"
    return FinetuneConfig(
        task="memory", init=cfg.export if init == "pretrained" else "none", arch=cfg.export,
        linear_probe=probe, epochs=cfg.probe_epochs if probe else cfg.finetune_epochs,
        blr=cfg.probe_blr if probe else cfg.finetune_blr,
        crop_min=cfg.probe_crop_min if probe else cfg.finetune_crop_min, probe_augment=cfg.probe_augment,
        randaug_ops=cfg.finetune_randaug, reprob=cfg.finetune_reprob, warmup_epochs=1 if probe else 2,
        batch_size=cfg.batch_size, seed=cfg.seed if seed is None else seed, workers=cfg.workers,
        progress=False, val_fraction=0.0, output_dir=output_dir, precision=cfg.precision)


def run_cell(train, test, names, cfg: ProofConfig, method: str, init: str, output_dir: str | None = None,
             seed: int | None = None) -> dict:
    """One (method, init) run of the runner on one split -> {method, init, accuracy, f1, auc, ...}."""
    from finetune.runner import finetune

    t = time.time()
    r = finetune(train, test, finetune_config(cfg, method, init, output_dir, seed), class_names=names)
    return {"method": method, "init": init, "accuracy": r["accuracy"], "f1": r["f1"], "auc": r["auc"],
            "n_train": r["n_train"], "n_test": r["n_test"], "seconds": round(time.time() - t, 1),
            "compute_precision": r["compute_precision"]["used"], "precision_reason": r["compute_precision"]["reason"]}


def _mean_std(xs: list) -> tuple[float | None, float | None]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    return m, (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5


def run_proof(cfg: ProofConfig, log=print) -> list[dict]:
    """The comparison; returns (and writes as ``proof.json``) one record per (method, init):
    accuracy / f1 / auc are means over ``cfg.splits`` patient splits (seeds seed, seed+1, ...),
    with ``*_std`` and the ``per_split`` values beside them."""
    methods = [m.strip() for m in cfg.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"--methods: {bad or methods} not in {METHODS}")
    if cfg.splits < 1:
        raise ValueError("--splits must be >= 1")
    t = time.time()
    if cfg.shards:
        e = check_held_out(cfg.shards, cfg.holdout_name)
        log(f"held out of pretraining: {cfg.holdout_name} ({e.get('written')} frames in holdout shards, "
            f"none in train/val)")
    recs, names = load_task(cfg.labels, cfg.curate)
    seeds = [cfg.seed + k for k in range(cfg.splits)]
    splits = [split_task(recs, cfg.test_fraction, s) for s in seeds]
    train, test = splits[0]
    log(f"task: {len(recs)} images of {len({r.group for r in recs})} patients, classes {names}; "
        f"{'curated' if cfg.curate else 'as stored'} in {time.time() - t:.1f}s; {cfg.splits} patient split(s) of "
        f"train {len(train)} images / {len({r.group for r in train})} patients, "
        f"test {len(test)} / {len({r.group for r in test})} (held-out patients)")
    out = Path(cfg.output_dir)
    rows = []
    for method in methods:
        for init in INITS:
            per = []
            for s, (tr, te) in zip(seeds, splits):
                d = out / "proof" / f"{method}_{init}" / (f"split{s}" if cfg.splits > 1 else "")
                per.append(run_cell(tr, te, names, cfg, method, init, str(d), seed=s))
            row = {"method": method, "init": init}
            for k in ("accuracy", "f1", "auc"):
                row[k], std = _mean_std([r[k] for r in per])
                if cfg.splits > 1:
                    row[f"{k}_std"] = std
            row.update(n_splits=cfg.splits, n_train=per[0]["n_train"], n_test=per[0]["n_test"],
                       compute_precision=per[0]["compute_precision"], precision_reason=per[0]["precision_reason"],
                       seconds=round(sum(r["seconds"] for r in per), 1),
                       per_split=[{"seed": s, **{k: r[k] for k in ("accuracy", "f1", "auc")}}
                                  for s, r in zip(seeds, per)])
            log(f"  {method:12s} {init:10s} accuracy {row['accuracy']:.3f}  macro-F1 {row['f1']:.3f}  "
                f"AUC {row['auc']:.3f}  ({row['seconds']:.0f}s)")
            rows.append(row)
    out.mkdir(parents=True, exist_ok=True)
    (out / "proof.json").write_text(json.dumps(rows, indent=1))
    return rows


def gains(rows: list[dict]) -> dict[str, float]:
    """method -> pretrained minus random accuracy (methods with both cells)."""
    by = {(r["method"], r["init"]): r for r in rows}
    return {m: by[(m, "pretrained")]["accuracy"] - by[(m, "random")]["accuracy"]
            for m in METHODS if (m, "random") in by and (m, "pretrained") in by}


def split_gains(rows: list[dict]) -> dict[str, list[float]]:
    """method -> pretrained minus random accuracy on each patient split."""
    by = {(r["method"], r["init"]): r for r in rows}
    out = {}
    for m in METHODS:
        if (m, "random") in by and (m, "pretrained") in by:
            rs, ps = by[(m, "random")].get("per_split"), by[(m, "pretrained")].get("per_split")
            if rs and ps:
                out[m] = [p["accuracy"] - r["accuracy"] for r, p in zip(rs, ps)]
    return out


def table(rows: list[dict], recon: str | None = None) -> str:
    def cell(r, k):
        if r.get(k) is None:
            return "n/a"
        return f"{r[k]:.3f}" + (f" ± {r[k + '_std']:.3f}" if r.get(k + "_std") is not None else "")

    n = max((r.get("n_splits", 1) for r in rows), default=1)
    lines = ["| method | init | accuracy | macro-F1 | AUC |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['init']} | {cell(r, 'accuracy')} | {cell(r, 'f1')} | {cell(r, 'auc')} |")
    lines.append("")
    if n > 1:
        lines.append(f"(mean ± std over {n} patient splits; test patients never seen in training or pretraining)")
    per = split_gains(rows)
    for m, d in gains(rows).items():
        each = f" (per split: {', '.join(f'{g:+.3f}' for g in per[m])})" if n > 1 and m in per else ""
        lines.append(f"{m}: pretrained - random = {d:+.3f} accuracy{each}")
    if recon:
        lines.append(f"reconstruction grid: {recon}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, ProofConfig)
    cfg = parse(p, ProofConfig, argv)[0]
    rows = run_proof(cfg)
    print()
    print(table(rows, cfg.recon))
    print(f"wrote {Path(cfg.output_dir) / 'proof.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
