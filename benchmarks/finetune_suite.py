"""The paper's downstream comparison in one command: every task x (our encoder, ResNet-50 from
scratch, ViT-B/16 from scratch), one comparison table.

    python benchmarks/finetune_suite.py --init runs/export --output-dir runs/suite \\
        --busbra ~/data/BUSBRA --mmotu2d ~/data/MMOTU --gist514 ~/data/GIST514-DB [--cv] [--quick]

Each (task, model) runs :func:`finetune.runner.run_finetune` into
``OUTPUT_DIR/<task>/<model>/`` (results.json, results.md, plots); the suite writes
``OUTPUT_DIR/comparison.md`` and ``comparison.json``. A task without a data root, or the encoder
without ``--init``, is reported as *skipped*; a run that raises is reported as *failed* with its
error, the others still run, and the exit status is 1. The USF-MAE paper's figures stand beside
ours for every task.

Under ``torchrun --nproc_per_node N benchmarks/finetune_suite.py ...`` every run uses the N ranks
(``finetune.runner``: DDP, ``--batch-size`` per rank) and rank 0 writes the tables. Precision
follows the runner's rule (``--precision auto``: bf16 where the hardware runs it natively, else
fp32); the choice and its reason are in each ``results.json`` (``compute_precision``) and in
``comparison.json``. ``--resume`` checkpoints every epoch and continues every run from its last
checkpoint (a finished run is only re-scored): give it from the first attempt on.
"""
# no `from __future__ import annotations`: pydantic resolves string annotations through
# sys.modules, and the tests load this file by path without registering it there
import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, field, replace
from pathlib import Path
from typing import Literal

from runconfig import add_arguments, config, parse
from finetune.tasks import PAPER_RESULTS, TASKS
from finetune.config import ENCODER, FinetuneConfig
from finetune.dist import shutdown
from finetune.runner import run_finetune
from finetune.metrics import HEADLINE, pct
from trainer.distributed import rank
from trainer.precision import PRECISIONS

SUITE_TASKS = ("busbra", "mmotu2d", "gist514")
DEFAULT_MODELS = (ENCODER, "resnet50", "vit_base_patch16_224")
METRIC_NAMES = {"accuracy": "Acc", "precision": "P", "recall": "R", "f1": "F1", "auc": "AUC"}


@config
class SuiteConfig:
    busbra: str | None = None  # data root (each task without one is skipped)
    mmotu2d: str | None = None
    gist514: str | None = None
    init: str | None = None  # our encoder: export dir or training checkpoint dir
    output_dir: str = "runs/finetune_suite"
    models: str = ",".join(DEFAULT_MODELS)  # comma list: 'encoder' and/or timm baseline names
    baseline_ckpt: list[str] = field(default_factory=list)  # MODEL=PATH: local weights; default: from scratch
    quick: bool = False  # smoke run: 1 epoch, no warmup
    cv: bool = False  # all official folds/splits (BUS-BRA, GIST514)
    linear_probe: bool = False  # linear probe instead of fine-tuning
    epochs: int | None = None
    batch_size: int = 32
    img_size: int | None = None  # default: the encoder's / 224
    workers: int = 4
    loader: Literal["torch", "dali"] = "torch"
    device: str = "auto"
    precision: Literal[PRECISIONS] = "auto"  # auto: bf16 where the GPU/CPU runs it natively, else fp32
    resume: bool = False  # checkpoint every epoch, continue each run from its latest (give it from the start)
    seed: int = 0
    no_progress: bool = False


def parse_args(argv: Sequence[str] | None = None) -> SuiteConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    flags = {t: {"metavar": "DIR", "help": f"data root of {TASKS[t].title}"} for t in SUITE_TASKS}
    flags["baseline_ckpt"] = {"action": "append", "metavar": "MODEL=PATH", "nargs": None}
    flags["no_progress"] = {"action": "store_true"}
    add_arguments(p, SuiteConfig, flags=flags)
    return parse(p, SuiteConfig, argv)[0]


def _row(task: str, model: str, status: str, reason: str = "", res: dict | None = None, path: str = "") -> dict:
    row = {"task": task, "model": model, "status": status, "reason": reason, "results": path}
    for m in HEADLINE:
        row[m] = res.get(m) if res else None
        row[f"{m}_std"] = (res.get("std") or {}).get(m) if res else None
    if res:
        prec = res.get("compute_precision") or {}
        row.update(n_test=res.get("n_test") or sum(f["n_test"] for f in res.get("folds", [])),
                   n_folds=res.get("n_folds", 1), elapsed_s=res.get("elapsed_s"), label=res.get("model"),
                   compute_precision=prec.get("used"), compute_precision_reason=prec.get("reason"))
    return row


def comparison_markdown(rows: list[dict], cfg: dict) -> str:
    """One table: every (task, model) run plus the paper's own figure for each task."""
    used = sorted({f"{r['compute_precision']} ({r['compute_precision_reason']})" for r in rows
                   if r.get("compute_precision")})
    head = ["# Downstream comparison", "",
            (f"mode: {'linear probe' if cfg.get('linear_probe') else 'fine-tune'}; "
             f"{'cross-validation (mean ± std)' if cfg.get('cv') else 'official default split'}; "
             f"epochs {cfg.get('epochs')}; metrics in %, macro-averaged"
             + (f"; precision {', '.join(used)}" if used else "")), "",
            "| task | model | status | " + " | ".join(METRIC_NAMES[m] for m in HEADLINE) + " |",
            "|---|---|---|" + "---:|" * len(HEADLINE)]
    lines = []
    for task in SUITE_TASKS:
        for r in (r for r in rows if r["task"] == task):
            cells = [pct(r[m], r[f"{m}_std"]) for m in HEADLINE]
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
            lines.append(f"| {task} | {r['model']} | {status} | " + " | ".join(cells) + " |")
        paper = PAPER_RESULTS.get(task, {})
        cells = [f"{paper[m]:.1f}" if m in paper else "—" for m in HEADLINE]
        lines.append(f"| {task} | USF-MAE (paper) | reported | " + " | ".join(cells) + " |")
    return "\n".join([*head, *lines, ""])


def run_suite(args: SuiteConfig) -> tuple[list[dict], int]:
    """Run every (task, model); returns the table rows and the number of failed runs."""
    out = Path(args.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    ckpts = dict(s.split("=", 1) for s in args.baseline_ckpt)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else FinetuneConfig.epochs)
    base = FinetuneConfig(epochs=epochs, warmup_epochs=0.0 if args.quick else FinetuneConfig.warmup_epochs,
                          batch_size=args.batch_size, img_size=args.img_size, workers=args.workers,
                          loader=args.loader, device=args.device, seed=args.seed, cv=args.cv,
                          linear_probe=args.linear_probe, progress=not args.no_progress, precision=args.precision,
                          save_every=1 if args.resume else 0, resume="auto" if args.resume else None)
    rows, failed = [], 0
    for task in SUITE_TASKS:
        root = getattr(args, task)
        for model in models:
            if root is None:
                rows.append(_row(task, model, "skipped", f"no --{task} data root"))
                continue
            if model == ENCODER and not args.init:
                rows.append(_row(task, model, "skipped", "no --init"))
                continue
            run_dir = out / task / model
            cfg = replace(base, task=task, data_root=root, model=model, output_dir=str(run_dir),
                          init=args.init if model == ENCODER else None, baseline_ckpt=ckpts.get(model))
            t0 = time.time()
            try:
                res = run_finetune(cfg)
            except Exception as e:  # noqa: BLE001 -- one failed run must not stop the suite; it is reported
                failed += 1
                logging.getLogger("finetune_suite").error("%s / %s failed:\n%s", task, model, traceback.format_exc())
                rows.append(_row(task, model, "failed", f"{type(e).__name__}: {e}"))
                continue
            rows.append(_row(task, model, "ok", res=res, path=str(run_dir / "results.json")))
            logging.getLogger("finetune_suite").info("%s / %s: F1 %s in %.0f s", task, model, pct(res["f1"]),
                                                     time.time() - t0)
    cfg_dict = {**asdict(base), "models": models, "init": args.init,
                "data_roots": {t: getattr(args, t) for t in SUITE_TASKS}}
    if rank() != 0:  # every rank ran every run; rank 0 writes the tables
        return rows, failed
    (out / "comparison.json").write_text(json.dumps(
        {"rows": rows, "paper": {"model": "USF-MAE (paper)", "percent": PAPER_RESULTS}, "config": cfg_dict},
        indent=2, default=str))
    md = comparison_markdown(rows, cfg_dict)
    (out / "comparison.md").write_text(md)
    print(md)
    return rows, failed


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _, failed = run_suite(parse_args(argv))
    finally:
        shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
