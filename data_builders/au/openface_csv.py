"""Import OpenFace 2.x ``FeatureExtraction`` CSVs as :class:`~data_builders.au.AUSeries`.

Tolerated: the three header styles seen in real files (``frame, face_id, timestamp, ...`` with a
space after each comma; the same without spaces; no ``face_id`` column), extra trailing columns,
a truncated last row (dropped, flagged ``openface_truncated_row``), AUs missing from the file
(zero, flagged ``openface_missing_aus``; OpenFace has no ``AU28_r`` for example). Frames with
``success`` 0 or ``confidence`` below ``min_confidence`` count as frames without a face. With
several ``face_id`` values the face with the most usable frames is kept.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from data_builders.au import AUSeries
from emollm.dataset.aus import AU_INTENSITY_MAX, MERR_AUS
from emollm.errors import AUExtractionError

VERSION = "openface_csv/1"


def find_csv(openface_dir: str | os.PathLike[str], clip_id: str) -> Path:
    """``<openface_dir>/<clip_id>.csv``, else ``<openface_dir>/<basename>.csv``."""
    root = Path(openface_dir)
    for candidate in (root / f"{clip_id}.csv", root / f"{Path(clip_id).name}.csv"):
        if candidate.is_file():
            return candidate
    raise AUExtractionError(
        root / f"{clip_id}.csv",
        "no OpenFace CSV for this clip",
        hint="name OpenFace outputs after the clip id (its path under the clips folder, without extension)",
    )


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def read_openface_csv(
    path: str | os.PathLike[str], *, min_confidence: float = 0.8, presence_threshold: float = 1.0, fps: float | None = None
) -> AUSeries:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            rows = list(csv.reader(fh))
    except OSError as e:
        raise AUExtractionError(path, f"cannot read: {e.strerror or e}") from None
    if not rows:
        raise AUExtractionError(path, "empty OpenFace CSV")
    header = [h.strip() for h in rows[0]]
    col = {name: i for i, name in enumerate(header) if name}
    if "frame" not in col:
        raise AUExtractionError(path, f"not an OpenFace CSV: no 'frame' column (header starts {header[:4]})")
    flags: list[str] = []
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    if body and len(body[-1]) < len(header):
        body = body[:-1]
        flags.append("openface_truncated_row")
    body = [r for r in body if len(r) >= len(header)]
    if not body:
        raise AUExtractionError(path, "OpenFace CSV has no complete data row")
    data = np.array([[_float(r[i]) for i in range(len(header))] for r in body], dtype=np.float64)

    def column(name: str, default: float) -> np.ndarray:
        return data[:, col[name]] if name in col else np.full(len(data), default)

    frame = column("frame", 0).astype(np.int64)
    success = column("success", 1.0) >= 0.5
    conf = column("confidence", 1.0)
    usable = success & (conf >= min_confidence)
    if "face_id" in col:
        ids = column("face_id", 0).astype(np.int64)
        best = max(set(ids.tolist()), key=lambda f: (int((usable & (ids == f)).sum()), -f))
        keep = ids == best
        if len(set(ids.tolist())) > 1:
            flags.append("multiple_faces")
        data, frame, usable = data[keep], frame[keep], usable[keep]
        conf = conf[keep]
    if "timestamp" in col:
        times = data[:, col["timestamp"]]
    else:
        times = (frame - 1) / (fps or 30.0)
    inten = np.zeros((len(data), len(MERR_AUS)), dtype=np.float32)
    pres = np.zeros((len(data), len(MERR_AUS)), dtype=np.uint8)
    missing = []
    for j, au in enumerate(MERR_AUS):
        r, c = f"{au}_r", f"{au}_c"
        if r in col:
            inten[:, j] = np.clip(np.nan_to_num(data[:, col[r]]), 0.0, AU_INTENSITY_MAX)
        if c in col:
            pres[:, j] = np.nan_to_num(data[:, col[c]]) >= 0.5
        elif r in col:
            pres[:, j] = inten[:, j] >= presence_threshold
        if r not in col and c not in col:
            missing.append(au)
        elif r not in col:  # presence only: intensity 1 where present, so sums and rules still see it
            inten[:, j] = pres[:, j].astype(np.float32)
    if missing:
        flags.append("openface_missing_aus")
    inten[~usable] = 0
    pres[~usable] = 0
    if not usable.any():
        flags.append("no_face")
    elif not usable.all():
        flags.append("face_partly_absent")
    return AUSeries(
        intensity=inten,
        presence=pres,
        frame_indices=np.maximum(frame - 1, 0),  # OpenFace counts frames from 1
        timestamps_s=times.astype(np.float64),
        face=usable,
        source="openface_csv",
        flags=flags,
        num_tracks=1,
    )
