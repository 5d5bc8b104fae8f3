"""AU sources: per-frame action-unit intensities and presences in :data:`MERR_AUS` order.

Three sources produce the same :class:`AUSeries`: OpenFace 2.x CSV import
(:mod:`.openface_csv`), the OpenFace ``FeatureExtraction`` binary (:mod:`.openface_bin`) and the
built-in offline landmark extractor (:mod:`.landmark_au`). :func:`save_aus` / :func:`load_aus`
write and read the per-frame side file (``.npz``, no pickle).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np

from emollm.dataset.aus import AU_INTENSITY_MAX, MERR_AUS
from emollm.dataset.io import atomic_write_bytes

__all__ = ["AUSeries", "MERR_AUS", "AU_INTENSITY_MAX", "save_aus", "load_aus"]


@dataclass
class AUSeries:
    """AUs over the analysed frames of one clip.

    ``intensity`` float32 (T, len(MERR_AUS)) on 0-5, ``presence`` uint8 (T, len(MERR_AUS)),
    ``frame_indices`` int (T,) source frame indices, ``timestamps_s`` float (T,), ``face`` bool (T,)
    True where a face was measured (frames without one have zero intensity and presence).
    ``voiced`` bool (T,) True where the audio has voice near the frame (a moving mouth may be
    speech); ``extra`` per-frame measurements beyond the AUs (the built-in extractor's
    ``mouth_asymmetry``, 0-5), each (T,).
    """

    intensity: np.ndarray
    presence: np.ndarray
    frame_indices: np.ndarray
    timestamps_s: np.ndarray
    face: np.ndarray
    source: str
    flags: list[str] = field(default_factory=list)
    num_tracks: int = 0
    voiced: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.intensity.shape[0])

    @property
    def face_frames(self) -> int:
        return int(self.face.sum())

    def model_input(self) -> tuple[np.ndarray, np.ndarray]:
        """The AU encoder's input: ``(T, 2 * len(MERR_AUS))`` float32 (intensities, then presences)
        and the frame mask ``(T,)`` (True where a face was measured)."""
        features = np.concatenate([self.intensity, self.presence], axis=1).astype(np.float32)
        return features, self.face.astype(bool)


def save_aus(series: AUSeries, path: str | os.PathLike[str]) -> None:
    """Write ``series`` to ``path`` (.npz) atomically: a temporary file renamed into place."""
    buf = io.BytesIO()
    np.savez(
        buf,
        au_names=np.array(MERR_AUS),
        intensity=series.intensity.astype(np.float32),
        presence=series.presence.astype(np.uint8),
        frame_indices=series.frame_indices.astype(np.int64),
        timestamps_s=series.timestamps_s.astype(np.float64),
        face=series.face.astype(bool),
        source=np.array(series.source),
        voiced=(series.voiced if series.voiced is not None else np.zeros(series.num_frames)).astype(bool),
        **{f"extra_{k}": np.asarray(v, dtype=np.float32) for k, v in series.extra.items()},
    )
    atomic_write_bytes(path, buf.getvalue())


def load_aus(path: str | os.PathLike[str]) -> AUSeries:
    """Read a side file written by :func:`save_aus` (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as data:
        names = tuple(str(n) for n in data["au_names"])
        if names != MERR_AUS:
            raise ValueError(f"{path}: AU order {names} is not MERR_AUS")
        return AUSeries(
            intensity=data["intensity"],
            presence=data["presence"],
            frame_indices=data["frame_indices"],
            timestamps_s=data["timestamps_s"],
            face=data["face"],
            source=str(data["source"]),
            voiced=data["voiced"] if "voiced" in data.files else None,
            extra={k[len("extra_"):]: data[k] for k in data.files if k.startswith("extra_")},
        )
