"""Face detection, main-face tracking (gaps bridged) and aligned crops on real clips (default detector + 68 landmarks)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from emollm.errors import MissingDependencyError
from emollm.media import (
    FACE_TEMPLATE_5,
    FaceDetection,
    FaceDetector,
    align_face,
    alignment_matrix,
    associate_tracks,
    box_iou,
    face_crops,
    read_frames,
    track_faces,
    transform_points,
)
from emollm.media import faces as faces_mod

pytest.importorskip("dlib", reason="face tests need the 'faces' extra (dlib-bin)")

N = 12  # frames sampled per clip: enough to see a face come and go, cheap on 2 cores


@pytest.fixture(scope="module")
def tracked(sample_dir):
    """name -> (frames, FaceTrackResult) for the sample clips, detected once per module."""
    detector = FaceDetector()
    out = {}
    for name in ("single_face.mp4", "no_face.mp4", "face_noface.mov", "noface_face.mov"):
        frames = read_frames(sample_dir / name, num_frames=N)
        out[name] = (frames, track_faces(frames, detector))
    return out


def test_single_face_found_in_every_frame(tracked):
    frames, result = tracked["single_face.mp4"]
    assert result.num_frames == N
    assert result.main is not None and result.num_tracks == 1
    assert len(result.no_face_frames) <= 1  # "nearly all"; in practice none
    assert result.frame_indices == frames.indices
    for box, lm in zip(result.boxes, result.landmarks, strict=True):
        if box is None:
            continue
        w, h = box[2] - box[0], box[3] - box[1]
        assert 100 < w < 400 and 100 < h < 400  # a head in a 640x360 talking-head frame
        assert lm.shape == (68, 2) and lm.dtype == np.float32
        # The landmarks lie on the face the box found.
        cx, cy = lm.mean(0)
        assert box[0] < cx < box[2] and box[1] < cy < box[3]


def test_no_face_clip_reports_every_frame(tracked):
    _, result = tracked["no_face.mp4"]
    assert result.main is None and result.num_tracks == 0
    assert result.no_face_frames == list(range(N))
    assert result.boxes == [None] * N


def test_face_that_disappears(tracked):
    _, result = tracked["face_noface.mov"]
    assert result.main is not None
    assert result.face_frames[0] == 0  # present from the start
    assert result.no_face_frames and result.no_face_frames[-1] == N - 1  # gone at the end
    assert max(result.face_frames) < min(result.no_face_frames)


def test_face_that_appears(tracked):
    _, result = tracked["noface_face.mov"]
    assert result.main is not None
    assert result.no_face_frames[0] == 0  # absent at the start
    assert result.face_frames and result.face_frames[-1] == N - 1  # present at the end
    assert max(result.no_face_frames) < min(result.face_frames)


def test_aligned_crops_are_level_and_centred(tracked):
    frames, result = tracked["single_face.mp4"]
    crops = face_crops(frames, result, size=224)
    assert crops.images.shape == (len(result.face_frames), 224, 224, 3)
    assert crops.images.dtype == np.uint8 and crops.positions == result.face_frames
    detector = FaceDetector(detect_max_side=None)
    for crop in crops.images[::4]:
        assert crop.std() > 20  # a picture, not a blank
        # Independent check: find the face again *in the crop*; its eyes must be level and
        # where the template puts them.
        found = detector.detect(crop)
        assert len(found) == 1
        lm = found[0].landmarks
        left, right = lm[36:42].mean(0), lm[42:48].mean(0)
        assert abs(left[1] - right[1]) < 4  # level (pixels, at 224)
        np.testing.assert_allclose(left, FACE_TEMPLATE_5[0] * 224, atol=10)
        np.testing.assert_allclose(right, FACE_TEMPLATE_5[1] * 224, atol=10)
        box = found[0].box
        assert abs((box[0] + box[2]) / 2 - 112) < 15  # horizontally centred


def test_alignment_levels_a_tilted_face(tracked):
    frames, result = tracked["single_face.mp4"]
    pos = result.face_frames[0]
    frame, lm = frames.array[pos], result.landmarks[pos]
    # Rotate the frame 20 degrees (and its landmarks with it): the aligned crop must still be level.
    from PIL import Image

    h, w = frame.shape[:2]
    centre = np.array([w / 2, h / 2])
    angle = np.deg2rad(20)
    rotated = np.asarray(Image.fromarray(frame).rotate(20, center=tuple(centre), resample=Image.Resampling.BILINEAR))
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])  # PIL rotates counter-clockwise
    lm_rot = ((lm + 0.5 - centre) @ rot.T + centre - 0.5).astype(np.float32)
    m = alignment_matrix(lm_rot, 224)
    eyes = transform_points(np.stack([lm_rot[36:42].mean(0), lm_rot[42:48].mean(0)]), m)
    assert abs(eyes[0, 1] - eyes[1, 1]) < 2
    crop = align_face(rotated, lm_rot, 224)
    found = FaceDetector(detect_max_side=None).detect(crop)
    assert len(found) == 1
    l_eye, r_eye = found[0].landmarks[36:42].mean(0), found[0].landmarks[42:48].mean(0)
    assert abs(l_eye[1] - r_eye[1]) < 4


def test_multi_face_image(sample_dir):
    frames = read_frames(sample_dir / "multi_face.jpg")
    result = track_faces(frames)
    assert result.num_tracks >= 2  # several people, one frame: one track each
    main = result.main
    # One frame: the main face is the largest.
    assert main.mean_area == max(t.mean_area for t in result.tracks)
    assert face_crops(frames, result).images.shape == (1, 224, 224, 3)


@pytest.fixture(scope="module")
def five(sample_dir):
    return read_frames(sample_dir / "single_face.mp4", indices=[0, 6, 12, 18, 24])


def test_missed_frames_are_found_again_closer(five, misses_at):
    result = track_faces(five, misses_at({1, 2}))
    assert result.redetected == [1, 2] and result.bridged == []
    assert result.no_face_frames == [] and result.main.positions == [0, 1, 2, 3, 4]
    for pos in (1, 2):
        det = result.main.at(pos)
        assert not det.bridged and det.score > 0.9
        assert box_iou(det.box, result.boxes[0]) > 0.5 and box_iou(det.box, result.boxes[3]) > 0.5
    assert len(face_crops(five, result)) == 5


def test_a_gap_with_no_face_to_find_is_bridged(five):
    frames = five.array.copy()
    frames[2] = 128  # the face gone for one frame (a cut-away, a hand): nothing to re-detect
    result = track_faces(frames)
    assert result.bridged == [2] and result.redetected == []
    assert result.no_face_frames == [] and len(face_crops(frames, result)) == 5
    det = result.main.at(2)
    assert det.bridged and det.score == 0.0 and det.landmarks.shape == (68, 2)
    expected = tuple((a + b) / 2 for a, b in zip(result.boxes[1], result.boxes[3], strict=True))
    np.testing.assert_allclose(det.box, expected, atol=1e-6)  # interpolated between its neighbours
    unbridged = track_faces(frames, bridge=False)
    assert unbridged.no_face_frames == [2] and unbridged.bridged == []
    # A gap longer than max_gap splits the track instead: nothing bridged.
    frames[1] = 128
    split = track_faces(frames, max_gap=1)
    assert split.bridged == [] and split.main.positions == [3, 4] and split.no_face_frames == [0, 1, 2]


def _det(x, y, size=100.0, score=1.0):
    return FaceDetection(box=(x, y, x + size, y + size), landmarks=np.zeros((68, 2), np.float32), score=score)


def test_association_picks_most_persistent_then_largest():
    # Track A (small) seen in 4 frames; track B (large) in 3; C a one-frame blip.
    dets = [
        [_det(0, 0, 50), _det(300, 0, 150)],
        [_det(2, 0, 50), _det(302, 0, 150)],
        [_det(4, 0, 50), _det(600, 300, 80)],
        [_det(6, 0, 50), _det(304, 0, 150)],
    ]
    result = associate_tracks(dets)
    assert result.num_tracks == 3
    assert result.main.num_frames == 4 and result.main.mean_area == 2500
    assert result.no_face_frames == []
    # B missed frame 2 but continues (within max_gap); with max_gap=0 it splits in two.
    assert [t.num_frames for t in result.tracks] == [4, 3, 1]
    assert [t.num_frames for t in associate_tracks(dets, max_gap=0).tracks] == [4, 2, 1, 1]


def test_association_tie_goes_to_larger_face():
    dets = [[_det(0, 0, 50), _det(300, 0, 150)], [_det(1, 0, 50), _det(301, 0, 150)]]
    result = associate_tracks(dets)
    assert result.main.mean_area == 150 * 150
    assert result.boxes[0] == (300, 0, 450, 150)


def test_association_gap_and_absence():
    dets = [[_det(0, 0)], [], [], [_det(5, 5)], [_det(400, 0)]]
    result = associate_tracks(dets, max_gap=2)
    assert result.main.positions == [0, 3]
    assert result.no_face_frames == [1, 2, 4]
    assert associate_tracks(dets, max_gap=1).main.num_frames == 1
    assert associate_tracks([[], []]).main is None


def test_missing_dlib_is_a_clear_error(monkeypatch):
    faces_mod._dlib_models.cache_clear()
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` fail
    try:
        with pytest.raises(MissingDependencyError) as info:
            FaceDetector().detect(np.zeros((64, 64, 3), np.uint8))
        assert info.value.package == "dlib-bin" and info.value.extra == "faces"
        assert "emollm[faces]" in info.value.hint
    finally:
        faces_mod._dlib_models.cache_clear()


def test_detector_rejects_non_rgb():
    with pytest.raises(ValueError):
        FaceDetector().detect(np.zeros((64, 64), np.uint8))
