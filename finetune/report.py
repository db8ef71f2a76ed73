"""What a fine-tune run writes: ``results.json``, ``results.md``, ``predictions.csv``,
``confusion.png`` and ``roc.png`` of one run, and the cross-validation aggregate (mean ± std over
folds, per-class table and confusion matrix on the pooled predictions), each beside the paper's
figures for the task.
"""
from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import timm
import torch

from finetune import metrics as M
from finetune.tasks import TASKS
from trainer.distributed import rank


def paper_figures(task: str) -> dict | None:
    """The USF-MAE paper's figures for ``task`` on the 0..1 scale used in results.json."""
    spec = TASKS.get(task)
    if not spec or not spec.paper:
        return None
    return {"model": "USF-MAE (paper)", **{k: v / 100.0 for k, v in spec.paper.items()}}


def versions() -> dict:
    return {"torch": torch.__version__, "timm": timm.__version__, "python": sys.version.split()[0]}


def results_markdown(r: dict) -> str:
    """Markdown report of one run or of a CV aggregate (``r["std"]`` present)."""
    std = r.get("std") or {}
    paper = r.get("paper") or {}
    head = [f"# {r.get('title', r['task'])}",
            "",
            f"- model: {r['model']} — {r['mode'].replace('_', ' ')}",
            f"- split: {r.get('split', '—')}" + (f" ({r['n_folds']} folds, mean ± std)" if r.get("n_folds") else
                                                 f"; train {r['n_train']} / val {r['n_val']} / test {r['n_test']} images"
                                                 f"; selected epoch {r['best_epoch']} by {r['selected_by']}"),
            "",
            "| metric | ours | USF-MAE (paper) |",
            "|---|---:|---:|"]
    names = {"accuracy": "accuracy", "precision": "precision (macro)", "recall": "recall (macro)",
             "f1": "F1 (macro)", "auc": "AUC" + (" (OvR macro)" if len(r["class_names"]) > 2 else "")}
    rows = [f"| {names[m]} | {M.pct(r.get(m), std.get(m) if std else None)} | {M.pct(paper.get(m))} |"
            for m in M.HEADLINE]
    body = ["", "## Per class" + (" (pooled over folds)" if r.get("n_folds") else ""), "",
            M.markdown_per_class(r["per_class"]), "", "## Confusion matrix", "",
            M.markdown_confusion(r["confusion_matrix"], r["class_names"]), ""]
    if r.get("folds"):
        body += ["## Folds", "", "| split | accuracy | F1 | AUC | test images |", "|---|---:|---:|---:|---:|"]
        body += [f"| {f['split']} | {M.pct(f['accuracy'])} | {M.pct(f['f1'])} | {M.pct(f['auc'])} | {f['n_test']} |"
                 for f in r["folds"]]
        body.append("")
    return "\n".join(head + rows + body)


def json_ready(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


def write_predictions(path: Path, ids: Sequence[str], y: np.ndarray, probs: np.ndarray,
                      class_names: Sequence[str]) -> None:
    """``predictions.csv``: one row per test record (id, label, predicted class, probabilities)."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label", "pred", *[f"p_{c}" for c in class_names]])
        for name, lab, p in zip(ids, y, probs):
            w.writerow([name, int(lab), int(np.argmax(p)), *[f"{v:.9g}" for v in p]])


def write_run(out_dir: Path, results: dict, y: np.ndarray, probs: np.ndarray, ids: Sequence[str] | None = None) -> None:
    """results.json, results.md, confusion.png, roc.png (and predictions.csv when the record
    ``ids`` are given) of one run, or of pooled CV predictions."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(json_ready(results), indent=2, default=str))
    if ids is not None:
        write_predictions(out_dir / "predictions.csv", ids, y, probs, results["class_names"])
    (out_dir / "results.md").write_text(results_markdown(results))
    title = f"{results['task']} {results.get('split', '')} — {results['model']}"
    M.plot_confusion(results["confusion_matrix"], results["class_names"], out_dir / "confusion.png", title)
    M.plot_roc(y, probs, results["class_names"], out_dir / "roc.png", title)


def aggregate_runs(runs: list[dict], out_dir: Path | None = None) -> dict:
    """CV aggregate: headline metrics as mean (with ``std``) over folds, per-class table and
    confusion matrix on the pooled test predictions (each image is tested once across folds)."""
    agg = M.aggregate(runs)
    y = np.concatenate([r["_pred"][0] for r in runs])
    probs = np.concatenate([r["_pred"][1] for r in runs])
    first = runs[0]
    pooled = M.classification_metrics(y, probs, first["class_names"])
    out = {k: first[k] for k in ("task", "title", "mode", "model", "class_names", "paper", "config", "encoder",
                                 "versions", "compute_precision", "distributed")}
    out.update({
        "split": "cv", "n_folds": len(runs), **agg["mean"], "mean": agg["mean"], "std": agg["std"],
        **{f"{m}_std": agg["std"][m] for m in M.HEADLINE},
        "per_class": pooled["per_class"], "confusion_matrix": pooled["confusion_matrix"],
        "pooled": {m: pooled[m] for m in (*M.HEADLINE, "n")},
        "folds": [{"split": r["split"], **{m: r[m] for m in M.HEADLINE}, "best_epoch": r["best_epoch"],
                   "n_train": r["n_train"], "n_val": r["n_val"], "n_test": r["n_test"]} for r in runs],
        "elapsed_s": round(sum(r["elapsed_s"] for r in runs), 2),
    })
    if out_dir is not None and rank() == 0:
        write_run(out_dir, out, y, probs)
    out["_pred"] = (y, probs)
    return out
