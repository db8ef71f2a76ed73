"""``usf-shard``: build, verify, stats, preview, index, demo (design §5)."""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from runconfig import ConfigError, add_arguments

from .config import BuildConfig, load_config, quick_datasets, validate

# `usf-shard build` has one flag per scalar BuildConfig field (--seed, --codec, --text-policy, ...):
# given, it overrides the --config YAML; not given, the YAML's value or the field default holds
BUILD_FLAGS = tuple(f.name for f in fields(BuildConfig) if f.name != "datasets")


def _build(a) -> int:
    from .build import BuildError, build
    from .manifest import accounting_line

    try:
        cfg = load_config(a.config, {k: getattr(a, k) for k in BUILD_FLAGS})
        if a.inputs:
            cfg.datasets += quick_datasets(a.inputs, holdout=tuple(a.holdout or ()))
            validate(cfg)
        for d in a.inputs:
            if not Path(d).is_dir():
                raise ConfigError(f"input directory not found: {d}")
    except ConfigError as e:
        print(f"usf-shard: config error: {e}", file=sys.stderr)
        return 2
    try:
        m = build(cfg, a.out, workers=a.workers, progress=not a.quiet, keep_work=a.keep_work)
    except BuildError as e:
        print(f"usf-shard: {e}", file=sys.stderr)
        return 1
    print(accounting_line(m["totals"]))
    return 0


def _verify(a) -> int:
    from .verify import verify

    rep = verify(a.dir, progress=not a.quiet)
    for e in rep.errors[:200]:
        print(f"FAIL {e}")
    if len(rep.errors) > 200:
        print(f"... and {len(rep.errors) - 200} more")
    print(f"{'OK' if rep.ok else 'FAILED'}: {rep.samples} samples checked, {len(rep.errors)} problem(s)")
    return 0 if rep.ok else 1


def _stats(a) -> int:
    from .report import stats_table

    print(stats_table(a.dir))
    return 0


def _preview(a) -> int:
    from .report import contact_sheet, curation_sheet

    if a.curation:
        path = curation_sheet(a.curation, a.out, n=a.n, seed=a.seed)
        print(f"{path} (before/after curation; LOCAL ONLY: shows raw frames with their banners)")
        return 0
    if not a.dir:
        print("usf-shard preview: give a shard DIR, or --curation RAW_DIR...", file=sys.stderr)
        return 2
    print(contact_sheet(a.dir, a.out, n=a.n, seed=a.seed))
    return 0


def _index(a) -> int:
    from .shards import write_index

    tars = sorted(Path(a.dir).glob("*.tar"))
    for t in tars:
        write_index(t)
    print(f"indexed {len(tars)} tar(s)")
    return 0


def _demo(a) -> int:
    from phantom import write_demo_corpus

    summary = write_demo_corpus(Path(a.dir), seed=a.seed, scale=a.scale)
    for name, s in summary.items():
        print(f"{name}: {s['files']} files, {s['frames']} frames, anatomy {s.get('anatomy')}")
    if a.downstream:
        from phantom import write_downstream_task

        csv = write_downstream_task(Path(a.dir) / a.downstream, seed=a.seed + 1, n_patients=a.patients,
                                    per_patient=a.per_patient, small_p=a.task_small_p,
                                    size_scale=a.task_size_scale, conspicuity=a.task_conspicuity)
        print(f"{a.downstream}: labelled lesion task (normal/cyst/solid), {a.patients} patients -> {csv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="usf-shard", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (names input files)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="curate raw collections into shards")
    b.add_argument("inputs", nargs="*", help="quick mode: each top-level folder is one dataset")
    b.add_argument("--out", required=True)
    b.add_argument("--config", help="curation YAML (see sharder/registry/openus46.yaml)")
    b.add_argument("--workers", type=int, default=1)
    b.add_argument("--holdout", action="append", metavar="NAME",
                   help="quick mode: dataset (folder) kept out of pretraining shards (repeatable)")
    b.add_argument("--keep-work", action="store_true", help="keep the _work dir (debugging)")
    add_arguments(b, BuildConfig, only=BUILD_FLAGS, overrides_only=True, config_file=False)
    b.set_defaults(fn=_build)
    v = sub.add_parser("verify", help="check shards, samples and accounting")
    v.add_argument("dir")
    v.set_defaults(fn=_verify)
    s = sub.add_parser("stats", help="table per dataset and anatomy")
    s.add_argument("dir")
    s.set_defaults(fn=_stats)
    pv = sub.add_parser("preview", help="contact sheet PNG of random samples (or before/after curation)")
    pv.add_argument("dir", nargs="?")
    pv.add_argument("--curation", nargs="+", metavar="RAW_DIR",
                    help="instead: before/after curation of raw inputs (local only: shows banners)")
    pv.add_argument("--out", required=True)
    pv.add_argument("-n", type=int, default=48)
    pv.add_argument("--seed", type=int, default=0)
    pv.set_defaults(fn=_preview)
    ix = sub.add_parser("index", help="write DALI .idx files for existing tars")
    ix.add_argument("dir")
    ix.set_defaults(fn=_index)
    d = sub.add_parser("demo", help="write the phantom demo corpus")
    d.add_argument("dir")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--scale", type=float, default=1.0)
    d.add_argument("--downstream", metavar="NAME", help="also write the labelled lesion task as folder NAME "
                   "(build it with --holdout NAME so it stays out of pretraining)")
    d.add_argument("--patients", type=int, default=40, help="patients in the lesion task")
    d.add_argument("--per-patient", type=int, default=6, help="views per patient in the lesion task")
    d.add_argument("--task-small-p", type=float, default=0.3, help="share of small lesions")
    d.add_argument("--task-size-scale", type=float, default=1.0, help="lesion radius factor")
    d.add_argument("--task-conspicuity", type=float, default=0.0, help="0..1: lesion contrast towards textbook")
    d.set_defaults(fn=_demo)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(main())
