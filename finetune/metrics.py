"""Classification metrics for the downstream fine-tune runs, and their plots and tables.

Conventions (all values on a 0..1 scale; ``None`` — JSON ``null`` — where undefined):

- ``y_true``: int array (N,), class indices in ``[0, K)``.
- ``y_prob``: float array (N, K), class probabilities (softmax output); the prediction is the
  arg-max of a row.
- accuracy: fraction of correct predictions.
- precision / recall / f1: *macro* averages over the classes that occur in ``y_true`` or in
  the predictions — scikit-learn's default label set, with ``zero_division=0``. A class absent
  from both has nothing to score and is left out (averaging in a 0 for it would punish a test
  split for its own sampling); a class that is predicted but absent from ``y_true`` stays in
  with precision 0, because those predictions are false alarms.
- auc: binary tasks: ROC AUC of the positive class (index 1) probability; ``None`` when
  ``y_true`` holds a single class. Multi-class: one-vs-rest ROC AUC per class, then the
  unweighted mean over the classes *present in* ``y_true`` (an absent class has no positives,
  so its AUC is undefined — scikit-learn returns NaN for the whole average then (older
  versions raise); we skip the class and list the classes used under ``auc_classes``). With every class present this equals
  ``roc_auc_score(y_true, y_prob, multi_class="ovr", average="macro")``.

Plots are drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas) so importing this module
never changes the process-wide matplotlib backend.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

HEADLINE = ("accuracy", "precision", "recall", "f1", "auc")


def _check(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_prob.ndim != 2 or y_prob.shape[0] != y_true.shape[0]:
        raise ValueError(f"y_prob must be (N, K) with N={y_true.shape[0]}, got {y_prob.shape}")
    k = y_prob.shape[1]
    if k < 2:
        raise ValueError("need at least two classes")
    if y_true.size and (y_true.min() < 0 or y_true.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}), got {y_true.min()}..{y_true.max()}")
    return y_true, y_prob


def per_class_auc(y_true: np.ndarray, y_prob: np.ndarray) -> list[float | None]:
    """One-vs-rest ROC AUC for every class; ``None`` for a class with no positives or no
    negatives in ``y_true`` (AUC undefined). y_true (N,), y_prob (N, K)."""
    y_true, y_prob = _check(y_true, y_prob)
    out: list[float | None] = []
    for c in range(y_prob.shape[1]):
        pos = y_true == c
        if pos.all() or not pos.any():
            out.append(None)
        else:
            out.append(float(roc_auc_score(pos.astype(np.int64), y_prob[:, c])))
    return out


def auc_score(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[float | None, list[int]]:
    """Headline AUC and the classes it averages (see module docstring).

    Returns (auc or None, classes used)."""
    y_true, y_prob = _check(y_true, y_prob)
    if y_prob.shape[1] == 2:
        if np.unique(y_true).size < 2:
            return None, []
        return float(roc_auc_score(y_true, y_prob[:, 1])), [0, 1]
    per = per_class_auc(y_true, y_prob)
    used = [c for c, a in enumerate(per) if a is not None]
    if not used:
        return None, []
    return float(np.mean([per[c] for c in used])), used


def classification_metrics(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str] | None = None
                           ) -> dict:
    """All metrics of one evaluation.

    Args:
        y_true: (N,) int class indices.
        y_prob: (N, K) probabilities.
        class_names: K names for the per-class table (defaults to the indices).

    Returns a JSON-ready dict: ``accuracy, precision, recall, f1, auc`` (macro, see module
    docstring), ``auc_classes``, ``n``, ``per_class`` (list of dicts) and
    ``confusion_matrix`` (K x K list, rows = true class, columns = predicted class).
    """
    y_true, y_prob = _check(y_true, y_prob)
    k = y_prob.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} probability columns")
    y_pred = y_prob.argmax(axis=1)
    if y_true.size == 0:
        raise ValueError("cannot score an empty prediction set")
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    auc, used = auc_score(y_true, y_prob)
    return {
        "n": int(y_true.size),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f),
        "auc": auc,
        "auc_classes": used,
        "per_class": per_class_table(y_true, y_prob, names),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist(),
    }


def per_class_table(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """Per-class support, predictions, precision, recall, F1 and one-vs-rest AUC.

    Undefined entries are ``None``: precision of a class never predicted, recall/F1 of a class
    absent from ``y_true``, AUC of a class absent from (or filling all of) ``y_true``."""
    y_true, y_prob = _check(y_true, y_prob)
    k = y_prob.shape[1]
    y_pred = y_prob.argmax(axis=1)
    p, r, f, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(k)), average=None, zero_division=0)
    aucs = per_class_auc(y_true, y_prob)
    rows = []
    for c in range(k):
        n_pred = int((y_pred == c).sum())
        rows.append({
            "class": class_names[c],
            "support": int(support[c]),
            "predicted": n_pred,
            "precision": float(p[c]) if n_pred else None,
            "recall": float(r[c]) if support[c] else None,
            "f1": float(f[c]) if support[c] else None,
            "auc": aucs[c],
        })
    return rows


def aggregate(runs: Sequence[dict], keys: Sequence[str] = HEADLINE) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single run) of each headline
    metric over cross-validation folds. Undefined (``None``) values are skipped; a metric
    undefined in every run stays ``None``. Returns ``{"mean": {...}, "std": {...}, "n": int}``."""
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for key in keys:
        vals = [float(r[key]) for r in runs if r.get(key) is not None]
        if not vals:
            mean[key], std[key] = None, None
            continue
        mean[key] = float(np.mean(vals))
        std[key] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(runs)}


# ---------------------------------------------------------------------------- formatting

def pct(value: float | None, std: float | None = None) -> str:
    """0..1 value as a percentage with one decimal (``"81.6"``, ``"81.6 ± 1.2"``, ``"—"``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    s = f"{100 * value:.1f}"
    if std is not None:
        s += f" ± {100 * std:.1f}"
    return s


def markdown_per_class(rows: Sequence[dict]) -> str:
    """Per-class table (from :func:`per_class_table`) as markdown."""
    lines = ["| class | support | predicted | precision | recall | F1 | AUC |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['class']} | {r['support']} | {r['predicted']} | {pct(r['precision'])} | "
                     f"{pct(r['recall'])} | {pct(r['f1'])} | {pct(r['auc'])} |")
    return "\n".join(lines)


def markdown_confusion(cm: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """Confusion matrix (rows true, columns predicted) as a markdown table."""
    head = "| true \\ predicted | " + " | ".join(class_names) + " |"
    sep = "|---|" + "---:|" * len(class_names)
    rows = [f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |" for name, row in zip(class_names, cm)]
    return "\n".join([head, sep, *rows])


# ---------------------------------------------------------------------------- plots

def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_confusion(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                   title: str = "") -> Path:
    """Save a confusion-matrix PNG: colour = row-normalised rate (recall per true class), text =
    counts. cm: (K, K) counts, rows true, columns predicted."""
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(3.5, 0.6 * k + 2.0)
    fig = _figure(size + 0.8, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(rates, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_roc(y_true: np.ndarray, y_prob: np.ndarray, class_names: Sequence[str], path: str | Path,
             title: str = "") -> Path:
    """Save a ROC PNG: the positive class for binary tasks, one one-vs-rest curve per class present
    in ``y_true`` otherwise. y_true (N,), y_prob (N, K)."""
    y_true, y_prob = _check(y_true, y_prob)
    k = y_prob.shape[1]
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="gray")
    classes = [1] if k == 2 else list(range(k))
    aucs = per_class_auc(y_true, y_prob)
    drawn = 0
    for c in classes:
        if aucs[c] is None:
            continue  # no positives or no negatives: no curve to draw
        fpr, tpr, _ = roc_curve((y_true == c).astype(np.int64), y_prob[:, c])
        ax.plot(fpr, tpr, lw=1.4, label=f"{class_names[c]} (AUC {aucs[c]:.3f})")
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "ROC undefined: one class in y_true", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    if drawn:
        ax.legend(loc="lower right", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
