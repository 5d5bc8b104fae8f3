"""Per-AU agreement between two AU sources on the same frames (the built-in extractor vs OpenFace).

:func:`agreement` pairs the frames both series measured (by source frame index, both with a face)
and reports per AU: Pearson's r of the intensities (None when either side is constant), presence
precision / recall / F1 (``ours`` against ``reference`` as the truth), the reference's presence rate
and the frame count; plus their means over the AUs the reference ever marks present.
:func:`openface_landmarks` reads OpenFace's own 68 landmarks (``x_0..x_67, y_0..y_67``) from its CSV, so
the built-in AU geometry can be compared on the very landmarks OpenFace used (no detector in between).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from data_builders.au import AUSeries
from emollm.dataset.aus import MERR_AUS
from emollm.errors import AUExtractionError


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.std(a) < 1e-9 or np.std(b) < 1e-9:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def agreement(ours: AUSeries, reference: AUSeries) -> dict[str, Any]:
    """Agreement of ``ours`` with ``reference`` on their common face frames (see the module docstring)."""
    ref_row = {int(f): k for k, f in enumerate(reference.frame_indices) if reference.face[k]}
    pairs = [(k, ref_row[int(f)]) for k, f in enumerate(ours.frame_indices) if ours.face[k] and int(f) in ref_row]
    out: dict[str, Any] = {"frames": len(pairs), "per_au": {}}
    if not pairs:
        return out | {"mean_r": None, "mean_f1": None}
    a_idx, b_idx = (np.array(x) for x in zip(*pairs, strict=True))
    rs, f1s = [], []
    for j, au in enumerate(MERR_AUS):
        x, y = ours.intensity[a_idx, j].astype(np.float64), reference.intensity[b_idx, j].astype(np.float64)
        p, t = ours.presence[a_idx, j].astype(bool), reference.presence[b_idx, j].astype(bool)
        tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
        r = _pearson(x, y)
        out["per_au"][au] = {"r": None if r is None else round(r, 4), "precision": precision, "recall": recall,
                             "f1": None if f1 is None else round(f1, 4), "reference_rate": round(float(t.mean()), 4),
                             "ours_rate": round(float(p.mean()), 4)}  # fmt: skip
        if t.any():
            f1s.append(f1 or 0.0)
            if r is not None:
                rs.append(r)
    out["mean_r"] = round(float(np.mean(rs)), 4) if rs else None
    out["mean_f1"] = round(float(np.mean(f1s)), 4) if f1s else None
    return out


def openface_landmarks(path: str | os.PathLike[str], *, min_confidence: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frame_indices 0-based, timestamps_s, landmarks (T, 68, 2) with NaN rows where OpenFace had no
    usable face) from an OpenFace 2.x CSV that kept its 2D landmarks (``-2Dfp``, the default)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise AUExtractionError(path, "empty OpenFace CSV")
    col = {name.strip(): i for i, name in enumerate(rows[0])}
    needed = [f"{a}_{i}" for a in ("x", "y") for i in range(68)]
    missing = [n for n in needed if n not in col]
    if missing or "frame" not in col:
        raise AUExtractionError(path, "no 2D landmark columns (x_0..y_67): run FeatureExtraction with -2Dfp")
    body = [r for r in rows[1:] if len(r) >= len(rows[0])]

    def num(r: list[str], name: str, default: float = np.nan) -> float:
        try:
            return float(r[col[name]]) if name in col else default
        except ValueError:
            return np.nan

    frames = np.array([int(num(r, "frame")) - 1 for r in body], dtype=np.int64)  # OpenFace counts from 1
    times = np.array([num(r, "timestamp", 0.0) for r in body], dtype=np.float64)
    lm = np.array([[[num(r, f"x_{i}"), num(r, f"y_{i}")] for i in range(68)] for r in body], dtype=np.float64)
    ok = np.array([num(r, "success", 1.0) >= 0.5 and num(r, "confidence", 1.0) >= min_confidence for r in body])
    lm[~ok] = np.nan
    return frames, times, lm


__all__ = ["agreement", "openface_landmarks"]
