"""finetune.metrics against scikit-learn on fixed predictions, including absent classes."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from finetune import metrics as M


def _probs(rng: np.random.Generator, y: np.ndarray, k: int, signal: float = 1.5) -> np.ndarray:
    logits = rng.normal(size=(y.size, k))
    logits[np.arange(y.size), y] += signal
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_binary_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = _probs(rng, y, 2, signal=0.8)
    pred = p.argmax(1)
    m = M.classification_metrics(y, p, ["benign", "malignant"])
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p[:, 1]))
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=[0, 1]).tolist()
    assert m["n"] == 60
    assert 0 < m["accuracy"] < 1  # the fixture is neither trivial nor hopeless


def test_multiclass_all_present_matches_sklearn_ovr():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 12)
    p = _probs(rng, y, 4)
    m = M.classification_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["auc_classes"] == [0, 1, 2, 3]
    assert m["f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))
    per = M.per_class_table(y, p, ["a", "b", "c", "d"])
    for c, row in enumerate(per):
        assert row["auc"] == pytest.approx(roc_auc_score(y == c, p[:, c]))
        assert row["support"] == 12


def test_absent_class_in_y_true():
    """Class 3 never occurs in y_true but is predicted twice. Macro P/R/F1 follow scikit-learn's
    default label set; AUC averages the classes present in y_true (sklearn's OvR gives NaN)."""
    y = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 1, 2])
    pred = np.array([0, 0, 3, 1, 1, 0, 2, 2, 3, 0, 1, 1])
    rng = np.random.default_rng(2)
    p = rng.uniform(0.01, 0.2, size=(12, 4))
    p[np.arange(12), pred] = 1.0
    p /= p.sum(1, keepdims=True)
    m = M.classification_metrics(y, p, ["a", "b", "c", "d"])
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
    # the false alarms on class 3 count: the macro average runs over 4 classes, not 3
    assert m["f1"] < f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0)
    expected_auc = np.mean([roc_auc_score(y == c, p[:, c]) for c in range(3)])
    assert m["auc"] == pytest.approx(expected_auc)
    assert m["auc_classes"] == [0, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # why we do not call sklearn's multiclass AUC directly: the absent class makes it NaN
        # (older scikit-learn raises); its per-class values without the NaN give ours
        sk_macro = roc_auc_score(y, p, multi_class="ovr", labels=[0, 1, 2, 3])
        sk_per = roc_auc_score(y, p, multi_class="ovr", labels=[0, 1, 2, 3], average=None)
    assert np.isnan(sk_macro)
    assert m["auc"] == pytest.approx(np.nanmean(sk_per))
    d = m["per_class"][3]
    assert d["support"] == 0 and d["predicted"] == 2
    assert d["precision"] == 0.0 and d["recall"] is None and d["f1"] is None and d["auc"] is None


def test_class_absent_everywhere_does_not_dilute_macro():
    y = np.array([0, 0, 1, 1, 0, 1])
    pred = np.array([0, 1, 1, 1, 0, 0])
    p = np.full((6, 3), 0.1)
    p[np.arange(6), pred] = 0.8
    m = M.classification_metrics(y, p)
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["f1"] > f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0)
    assert m["per_class"][2]["precision"] is None  # never predicted


def test_binary_single_class_auc_undefined():
    y = np.zeros(5, dtype=int)
    p = np.tile([0.7, 0.3], (5, 1))
    m = M.classification_metrics(y, p)
    assert m["auc"] is None and m["accuracy"] == 1.0


def test_aggregate_mean_std_skips_undefined():
    runs = [{"accuracy": 0.8, "precision": 0.7, "recall": 0.6, "f1": 0.65, "auc": 0.9},
            {"accuracy": 0.6, "precision": 0.5, "recall": 0.4, "f1": 0.45, "auc": None},
            {"accuracy": 0.7, "precision": 0.6, "recall": 0.5, "f1": 0.55, "auc": 0.8}]
    a = M.aggregate(runs)
    assert a["mean"]["f1"] == pytest.approx(0.55)
    assert a["std"]["f1"] == pytest.approx(np.std([0.65, 0.45, 0.55], ddof=1))
    assert a["mean"]["auc"] == pytest.approx(0.85)
    assert a["n"] == 3


def test_input_validation():
    with pytest.raises(ValueError):
        M.classification_metrics(np.array([0, 2]), np.full((2, 2), 0.5))  # label outside [0, K)
    with pytest.raises(ValueError):
        M.classification_metrics(np.array([0, 1, 1]), np.full((2, 2), 0.5))  # N mismatch


def test_plots_and_tables(tmp_path):
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 8)
    p = _probs(rng, y, 3)
    m = M.classification_metrics(y, p, ["x", "y", "z"])
    cpath = M.plot_confusion(m["confusion_matrix"], ["x", "y", "z"], tmp_path / "c.png", "t")
    rpath = M.plot_roc(y, p, ["x", "y", "z"], tmp_path / "r.png", "t")
    for path in (cpath, rpath):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    md = M.markdown_per_class(m["per_class"])
    assert md.count("\n") == 4 and "| x | 8 |" in md
    cm = M.markdown_confusion(m["confusion_matrix"], ["x", "y", "z"])
    assert f"| x | {m['confusion_matrix'][0][0]} |" in cm
    assert M.pct(0.8164) == "81.6" and M.pct(None) == "—" and M.pct(0.5, 0.012) == "50.0 ± 1.2"
