"""Peak frame of a clip from its per-frame AUs.

- ``intensity_sum``: the frame with the largest sum of AU intensities.
- ``frequent_aus`` (default; Emotion-LLaMA appendix): the clip's ``top_k`` most frequently present
  AUs (counted over frames with a face), then the frame with the largest intensity sum over those
  AUs only. AUs in ``ignore`` (default AU45, blinks) never define a peak.
Ties go to the earliest frame. Frames without a face are never the peak; no face at all: None.

Speech: talking moves the mouth all the time, so at *voiced* frames (``AUSeries.voiced``, from the
audio) the articulation AUs in :data:`SPEECH_AUS` count as absent, both for choosing the peak and for
the rules at the peak (:func:`speech_masked`); the upper face and the smile still count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_builders.au import AUSeries
from emollm.dataset.aus import MERR_AUS

METHODS = ("frequent_aus", "intensity_sum")
# Lip and jaw movements that speaking makes by itself (visemes): parted lips, jaw drop, upper-lip
# raise, lip stretch / tightening, chin raise.
SPEECH_AUS = ("AU10", "AU17", "AU20", "AU23", "AU25", "AU26")


def speech_masked(series: AUSeries) -> tuple[np.ndarray, np.ndarray]:
    """(intensity, presence) with :data:`SPEECH_AUS` zeroed at voiced frames."""
    inten, pres = series.intensity.copy(), series.presence.copy()
    voiced = getattr(series, "voiced", None)
    if voiced is not None and np.any(voiced):
        v = np.asarray(voiced, dtype=bool)
        cols = [MERR_AUS.index(au) for au in SPEECH_AUS]
        inten[np.ix_(v, cols)] = 0
        pres[np.ix_(v, cols)] = 0
    return inten, pres


@dataclass(frozen=True)
class Peak:
    position: int  # row in the AUSeries
    frame_index: int
    timestamp_s: float
    method: str
    aus: tuple[str, ...]  # the AUs whose intensities were summed


def find_peak(series: AUSeries, method: str = "frequent_aus", *, top_k: int = 3, ignore: Sequence[str] = ("AU45",)) -> Peak | None:
    if method not in METHODS:
        raise ValueError(f"unknown peak method {method!r}; one of {METHODS}")
    face = np.asarray(series.face, dtype=bool)
    if not face.any():
        return None
    usable = [j for j, au in enumerate(MERR_AUS) if au not in set(ignore)]
    intensity, presence = speech_masked(series)
    if method == "frequent_aus":
        counts = presence[face][:, usable].astype(np.int64).sum(axis=0)
        order = sorted(range(len(usable)), key=lambda k: (-counts[k], -intensity[face][:, usable[k]].sum(), k))
        chosen = [usable[k] for k in order[:top_k] if counts[k] > 0]
        if not chosen:  # nothing ever present: fall back to every usable AU
            chosen = usable
    else:
        chosen = usable
    score = intensity[:, chosen].sum(axis=1).astype(np.float64)
    score[~face] = -np.inf
    pos = int(np.argmax(score))
    return Peak(
        position=pos,
        frame_index=int(series.frame_indices[pos]),
        timestamp_s=float(series.timestamps_s[pos]),
        method=method,
        aus=tuple(MERR_AUS[j] for j in chosen),
    )
