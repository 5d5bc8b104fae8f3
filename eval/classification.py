"""Classification metrics over a label set: WAR (accuracy), UAR, weighted F1 (WAF), macro F1,
per-class precision / recall / F1 / support and the confusion matrix; k-fold mean +- std.

Conventions (DFEW / Emotion-LLaMA): WAR = accuracy over all samples; UAR = mean recall over the classes
present in the references; WAF = scikit-learn's support-weighted F1. A prediction of ``None`` (an
unparsable answer with no fallback) is wrong for every metric: it is a false negative of its true class
and never a true positive of any class. Everything is computed by scikit-learn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
)

INVALID = "<invalid>"  # the confusion-matrix column of predictions that are no label
HEADLINE = ("war", "uar", "waf", "macro_f1")


def classification_metrics(
    references: Sequence[str], predictions: Sequence[str | None], labels: Sequence[str]
) -> dict:
    """All classification metrics for one run. ``labels`` fixes the class order (a label set)."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    labels = list(labels)
    y_true = [str(r) for r in references]
    y_pred = [INVALID if p is None else str(p) for p in predictions]
    n = len(y_true)
    if n == 0:
        raise ValueError("no samples to score")
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        raise ValueError(f"reference labels outside the label set: {unknown}")
    present = [lab for lab in labels if lab in set(y_true)]
    seen = [lab for lab in labels if lab in set(y_true) | set(y_pred)]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm_labels = labels + ([INVALID] if INVALID in y_pred else [])
    cm = confusion_matrix(y_true, y_pred, labels=cm_labels)
    rows = cm.sum(axis=1, keepdims=True)
    cm_norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    return {
        "n": n,
        "war": float(accuracy_score(y_true, y_pred)),
        "uar": float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "waf": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=seen, average="macro", zero_division=0)),
        "per_class": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)
        },
        "confusion": {
            "labels": labels,
            "columns": cm_labels,
            "counts": cm[: len(labels)].tolist(),
            "row_normalized": [[round(float(v), 6) for v in row] for row in cm_norm[: len(labels)]],
        },
    }


def mean_std(values: Sequence[float]) -> dict:
    """Mean and population std (ddof=0, as k-fold papers report) of per-fold values."""
    arr = np.asarray(list(values), dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std()) if len(arr) > 1 else 0.0}


def kfold_summary(per_fold: Mapping[str, Mapping]) -> dict:
    """Headline metrics as mean +- std over folds (each fold: a :func:`classification_metrics` dict)."""
    return {key: mean_std([m[key] for m in per_fold.values()]) for key in HEADLINE if per_fold} | {
        "folds": list(per_fold)
    }


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"
