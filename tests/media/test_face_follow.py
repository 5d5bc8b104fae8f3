"""Following a face to a frame close in time (``faces.follow``): MTCNN's O-Net checks and refines the
box it is given, the pyramid search around it (``find_near``) decides where it sees no face; on real faces."""

from __future__ import annotations

import numpy as np
import pytest

from emollm.media import FaceDetector, box_iou, read_frames
from emollm.media import faces as faces_mod
from emollm.media.detectors import detector_spec

pytest.importorskip("dlib", reason="face tests need the 'faces' extra (dlib-bin)")

DETECT = 320  # build.detect_max_side: the builder's videos


@pytest.fixture(scope="module")
def pair(sample_dir):
    """Frames 0 and 3 (0.1 s apart) of single_face.mp4 and the face found on frame 0."""
    frames = read_frames(sample_dir / "single_face.mp4", indices=[0, 3], max_side=640).array
    (face,) = FaceDetector(detect_max_side=DETECT).detect(frames[0])
    return frames, face


def count_searches(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = faces_mod.find_near
    monkeypatch.setattr(faces_mod, "find_near", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_box_map_invert_undoes_apply():
    box_map = detector_spec("mtcnn").box_map
    box = (100.0, 50.0, 180.0, 130.0)  # square, as mapped boxes are
    assert np.allclose(box_map.apply(box_map.invert(box)), box)
    assert np.allclose(box_map.invert(box_map.apply(box)), box)


def test_follow_checks_the_box_without_a_search(pair, monkeypatch):
    frames, face = pair
    detector = FaceDetector(detect_max_side=DETECT)
    searches = count_searches(monkeypatch)
    followed = faces_mod.follow(frames[1], face.box, detector)
    assert followed is not None and searches == []  # O-Net saw the face: no pyramid search
    searched = faces_mod.find_near(frames[1], face.box, detector)
    assert box_iou(followed.box, searched.box) > 0.8
    iod = np.linalg.norm(searched.landmarks[36:42].mean(0) - searched.landmarks[42:48].mean(0))
    assert np.abs(followed.landmarks - searched.landmarks).mean() < 0.1 * iod


def test_follow_finds_no_face_where_there_is_none(pair, monkeypatch):
    frames, face = pair
    searches = count_searches(monkeypatch)
    blank = np.full_like(frames[1], 128)
    assert faces_mod.follow(blank, face.box, FaceDetector(detect_max_side=DETECT)) is None
    assert searches == [1]  # O-Net said no face: the search decided (and found none either)


def test_follow_a_face_that_moved_away_from_the_box_by_searching(pair, monkeypatch):
    """A box off the face (the check's face does not overlap it enough): the search around it decides."""
    frames, face = pair
    w = face.box[2] - face.box[0]
    off = (face.box[0] + 0.6 * w, face.box[1], face.box[2] + 0.6 * w, face.box[3])
    searches = count_searches(monkeypatch)
    followed = faces_mod.follow(frames[1], off, FaceDetector(detect_max_side=DETECT))
    assert searches == [1]
    assert followed is None or box_iou(followed.box, off) >= faces_mod.BRIDGE_MIN_IOU


def test_follow_with_a_detector_without_a_check_is_the_search(pair):
    frames, face = pair
    hog = FaceDetector("dlib_hog", detect_max_side=DETECT)
    assert hog.check(frames[1], face.box) is None
    a, b = faces_mod.follow(frames[1], face.box, hog), faces_mod.find_near(frames[1], face.box, hog)
    assert a is not None and a.box == b.box
