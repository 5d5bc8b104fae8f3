"""Sentiment-regression metrics as the CMU-MOSI / MOSEI literature reports them (MMSA's
``MetricsTop``, used by DMD and most MOSI papers), for scores on the [-3, 3] scale.

- ``acc7``: predictions and references clipped to [-3, 3] and rounded (numpy's round-half-to-even, as
  the literature's ``np.round``) to the seven grades -3 ... 3; accuracy of equal grades.
- ``acc2`` / ``f1``: negative (< 0) vs non-negative (>= 0), accuracy and support-weighted F1.
- ``acc2_nonzero`` / ``f1_nonzero``: the usual headline "Acc-2": samples whose reference is exactly 0
  are left out, then negative (<= 0) vs positive (> 0) predictions against the non-zero references.
- ``mae``: mean absolute error of the raw (unclipped) scores; ``corr``: Pearson correlation (NaN when
  either side is constant).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

REGRESSION_HEADLINE = ("acc2_nonzero", "f1_nonzero", "acc7", "mae", "corr")


def _as_scores(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} hold non-finite scores (NaN or inf)")
    return array


def regression_metrics(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> dict:
    """The MOSI-style metrics of one run: ``acc7``, ``acc2``, ``acc2_nonzero``, ``f1``, ``f1_nonzero``,
    ``mae``, ``corr`` and ``n`` (see the module docstring). ``acc2_nonzero`` / ``f1_nonzero`` are NaN
    when every reference is 0."""
    truth = _as_scores(y_true, "references")
    preds = _as_scores(y_pred, "predictions")
    if len(truth) != len(preds):
        raise ValueError(f"{len(truth)} references but {len(preds)} predictions")
    if len(truth) == 0:
        raise ValueError("no samples to score")

    acc7 = float(np.mean(np.round(np.clip(preds, -3.0, 3.0)) == np.round(np.clip(truth, -3.0, 3.0))))
    binary_truth, binary_preds = truth >= 0, preds >= 0
    acc2 = float(accuracy_score(binary_truth, binary_preds))
    f1 = float(f1_score(binary_truth, binary_preds, average="weighted", zero_division=0))

    nonzero = truth != 0
    if nonzero.any():
        nz_truth, nz_preds = truth[nonzero] > 0, preds[nonzero] > 0
        acc2_nonzero = float(accuracy_score(nz_truth, nz_preds))
        f1_nonzero = float(f1_score(nz_truth, nz_preds, average="weighted", zero_division=0))
    else:
        acc2_nonzero = f1_nonzero = float("nan")

    mae = float(np.mean(np.abs(preds - truth)))
    if len(truth) < 2 or np.std(truth) == 0 or np.std(preds) == 0:
        corr = float("nan")  # undefined; np.corrcoef would warn and return NaN anyway
    else:
        corr = float(np.corrcoef(preds, truth)[0, 1])
    return {"n": int(len(truth)), "acc7": acc7, "acc2": acc2, "acc2_nonzero": acc2_nonzero, "f1": f1,
            "f1_nonzero": f1_nonzero, "mae": mae, "corr": corr}
