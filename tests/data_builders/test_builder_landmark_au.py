"""The built-in geometric AU extractor: invariance to pose scale/roll, and AUs moving with landmarks."""

from __future__ import annotations

import numpy as np
import pytest

from data_builders.au.landmark_au import geometric_features, intensities
from emollm.media import FaceDetector, read_frames
from emollm.modeling.au_encoder import MERR_AUS


@pytest.fixture(scope="module")
def face68(sample_dir) -> np.ndarray:
    frame = read_frames(sample_dir / "single_face.jpg").array[0]
    return FaceDetector().detect(frame)[0].landmarks.astype(np.float64)


def _j(au: str) -> int:
    return MERR_AUS.index(au)


def test_features_ignore_face_size_position_and_roll(face68):
    angle = np.deg2rad(20)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (face68 - face68.mean(0)) @ rot.T * 0.4 + [50, 80]
    a, b = geometric_features(np.stack([face68, moved]))
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_each_expression_raises_its_au_against_the_clip_baseline(face68):
    iod = np.linalg.norm(face68[42:48].mean(0) - face68[36:42].mean(0))
    smile, jaw, blink, brows = (face68.copy() for _ in range(4))
    smile[[48, 54], 1] -= 0.15 * iod  # lip corners up
    smile[48, 0] -= 0.05 * iod
    smile[54, 0] += 0.05 * iod
    jaw[[6, 7, 8, 9, 10, 57, 58, 56, 65, 66, 67], 1] += 0.4 * iod  # jaw and lower lip drop
    blink[[37, 38, 43, 44], 1] = blink[[41, 40, 47, 46], 1]  # upper lids meet lower lids
    brows[17:27, 1] -= 0.15 * iod  # brows raised
    frames = np.stack([face68] * 6 + [smile, jaw, blink, brows])
    inten = intensities(geometric_features(frames), baseline="clip", percentile=10)
    neutral = inten[0]
    s, j, b, r = (inten[k] - neutral for k in (6, 7, 8, 9))  # change against the clip's neutral frames
    assert s[_j("AU12")] >= 2 and s[_j("AU15")] <= 0
    assert j[_j("AU26")] >= 2 and j[_j("AU25")] >= 2
    assert b[_j("AU45")] >= 4 and b[_j("AU05")] <= 0
    assert r[_j("AU01")] >= 2 and r[_j("AU02")] >= 2 and r[_j("AU04")] <= 0
    assert max(neutral[_j("AU12")], neutral[_j("AU26")], neutral[_j("AU45")]) < 0.1
    assert (inten >= 0).all() and (inten <= 5).all()


def test_frames_without_a_face_have_zero_aus(face68):
    frames = np.stack([face68, np.full((68, 2), np.nan), face68])
    inten = intensities(geometric_features(frames), baseline="reference")
    assert inten[1].sum() == 0 and inten.shape == (3, len(MERR_AUS))
