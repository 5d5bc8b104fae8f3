"""Keyframe mode of ``track_faces`` (``media.face.keyframe_every``): the full-frame detector on
keyframes; between them the main face's last box checked by the detector's last stage (MTCNN's
O-Net), a search around it where that sees no face; on real faces."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emollm import config as cfglib
from emollm.errors import ConfigError
from emollm.media import FaceDetector, associate_tracks, bridge_gaps, read_frames, track_faces
from emollm.media import faces as faces_mod

pytest.importorskip("dlib", reason="face tests need the 'faces' extra (dlib-bin)")

GREY = 128
DETECT = 320  # build.detect_max_side: the builder's videos


def spy_backend(monkeypatch, detector: FaceDetector) -> list[str]:
    """Record each backend call as "full" (the full-frame pass: max_side given), "region" (a search
    on a crop) or "check" (one box given to the last stage, ``verify``)."""
    calls: list[str] = []
    _, backend = detector._backend()
    real = backend.detect
    if hasattr(backend, "verify"):
        real_verify = backend.verify

        def verify(frame, boxes):
            calls.extend(["check"] * len(boxes))
            return real_verify(frame, boxes)

        monkeypatch.setattr(backend, "verify", verify)

    if faces_mod._takes_min_face(backend):

        def detect(frame, *, max_side, upsample, min_face=None):
            calls.append("full" if max_side is not None else "region")
            kw = {} if min_face is None else {"min_face": min_face}
            return real(frame, max_side=max_side, upsample=upsample, **kw)
    else:

        def detect(frame, *, max_side, upsample):
            calls.append("full" if max_side is not None else "region")
            return real(frame, max_side=max_side, upsample=upsample)

    monkeypatch.setattr(backend, "detect", detect)
    return calls


def iod(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


@pytest.fixture(scope="module")
def talking(sample_dir):
    """single_face.mp4 at the builder's 5 fps: (frames, every-frame result)."""
    frames = read_frames(sample_dir / "single_face.mp4", fps=5)
    return frames, track_faces(frames, FaceDetector(detect_max_side=DETECT), min_frames=2)


def test_keyframe_mode_finds_every_face_with_fewer_full_frame_calls(talking, monkeypatch):
    frames, every = talking
    n = len(frames.indices)
    assert n >= 10 and every.no_face_frames == []
    detector = FaceDetector(detect_max_side=DETECT)
    calls = spy_backend(monkeypatch, detector)
    result = track_faces(frames, detector, min_frames=2, keyframe_every=5)
    assert result.no_face_frames == [] and result.num_tracks == 1
    keyframes = list(range(0, n, 5))
    assert calls.count("full") == len(keyframes) < n  # only the keyframes: no check failed
    assert result.roi_frames == [p for p in range(n) if p not in keyframes]
    # between keyframes one O-Net check of the last box each, no pyramid search
    assert calls.count("check") == len(result.roi_frames) and calls.count("region") == 0
    assert result.redetected == result.bridged == []
    for pos in range(n):  # the same face, landmarks within the detector's jitter
        if pos in keyframes:
            np.testing.assert_array_equal(result.landmarks[pos], every.landmarks[pos])
        err = np.linalg.norm(result.landmarks[pos] - every.landmarks[pos], axis=1).mean() / iod(every.landmarks[pos])
        assert err < 0.03, (pos, err)


def test_keyframe_every_1_is_the_old_path(sample_dir, monkeypatch, misses_at):
    frames = read_frames(sample_dir / "single_face.mp4", indices=[0, 6, 12, 18, 24])
    old_detector = misses_at({2}, detect_max_side=DETECT)  # a miss, so that bridging runs too
    old = associate_tracks(old_detector.detect_frames(frames), frame_indices=frames.indices)
    bridge_gaps(old, frames, old_detector)
    detector = misses_at({2}, detect_max_side=DETECT)
    calls = spy_backend(monkeypatch, detector)
    new = track_faces(frames, detector, keyframe_every=1)
    assert calls.count("full") == 4 and new.redetected == old.redetected == [2] and new.roi_frames == []
    assert new.boxes == old.boxes and new.no_face_frames == old.no_face_frames == []
    assert [t.positions for t in new.tracks] == [t.positions for t in old.tracks]
    for a, b in zip(new.landmarks, old.landmarks, strict=True):
        np.testing.assert_array_equal(a, b)
    assert [[d.box for d in ds] for ds in new.detections] == [[d.box for d in ds] for ds in old.detections]
    # A still (one frame) is a keyframe whatever keyframe_every says.
    still = read_frames(sample_dir / "single_face.jpg")
    a, b = track_faces(still, keyframe_every=5), track_faces(still)
    assert a.boxes == b.boxes and a.roi_frames == [] and np.array_equal(a.landmarks[0], b.landmarks[0])


@pytest.fixture(scope="module")
def face_patch(sample_dir) -> np.ndarray:
    """The real face of single_face.jpg with some margin, resized so the face is ~100 px wide."""
    still = read_frames(sample_dir / "single_face.jpg").array[0]
    (face,) = FaceDetector(detect_max_side=None).detect(still)
    left, top, right, bottom = face.box
    w = right - left
    crop = Image.fromarray(still).crop((int(left - 0.4 * w), int(top - 0.5 * w), int(right + 0.4 * w), int(bottom + 0.3 * w)))
    s = 100 / w
    return np.asarray(crop.resize((round(crop.width * s), round(crop.height * s)), Image.Resampling.LANCZOS))


def _frame(patch: np.ndarray | None, at: tuple[int, int] = (0, 0)) -> np.ndarray:
    frame = np.full((360, 640, 3), GREY, np.uint8)
    if patch is not None:
        x, y = at
        frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return frame


def test_a_face_that_jumps_or_comes_and_goes_is_still_found(face_patch, monkeypatch):
    a, b = (30, 20), (460, 170)  # far apart: the search around one never sees the other
    frames = np.stack([_frame(None), _frame(None), *[_frame(face_patch, a)] * 4,
                       *[_frame(face_patch, b)] * 3, _frame(None)])  # fmt: skip
    every = track_faces(frames, FaceDetector(detect_max_side=DETECT), bridge=False)
    detector = FaceDetector(detect_max_side=DETECT)
    calls = spy_backend(monkeypatch, detector)
    result = track_faces(frames, detector, bridge=False, keyframe_every=4)
    present = [0, 0, 1, 1, 1, 1, 1, 1, 1, 0]
    assert [len(d) for d in every.detections] == present == [len(d) for d in result.detections]
    assert result.face_frames == every.face_frames == [2, 3, 4, 5]  # the main face: 4 frames at a
    assert [t.positions for t in result.tracks] == [t.positions for t in every.tracks] == [[2, 3, 4, 5], [6, 7, 8]]
    for pos in range(2, 9):  # the same face found in the same place
        assert faces_mod.box_iou(result.detections[pos][0].box, every.detections[pos][0].box) > 0.8
    # Keyframes 0, 4, 8; frame 6 (the jump) and 9 (gone) fall back to the full frame after the check
    # of the last box and the search around it see no face; frames 1-3 (nothing to follow) wait for
    # keyframe 4, which follows its face back to frame 2 (the check at frame 1 sees grey).
    assert calls.count("full") == 5 < len(frames)
    assert calls.count("region") == 3  # frames 1 (back from 4), 6 and 9: only where a check failed
    assert result.roi_frames == [2, 3, 5, 7]
    assert result.no_face_frames == every.no_face_frames


def test_keyframe_every_is_checked():
    with pytest.raises(ConfigError) as info:
        cfglib.load(None, ["media.face.keyframe_every=0"])
    assert "media.face.keyframe_every" in str(info.value)
    with pytest.raises(ConfigError) as info:
        cfglib.load(None, ["media.face.keyframe_evry=3"])
    assert "media.face.keyframe_evry" in str(info.value) and "keyframe_every" in (info.value.hint or "")
    assert cfglib.load(None, ["media.face.keyframe_every=1"]).media.face.keyframe_every == 1
    with pytest.raises(ValueError, match="keyframe_every"):
        track_faces([_frame(None)], keyframe_every=0)


def test_min_face_hint_skips_smaller_faces(face_patch):
    frame = _frame(face_patch, (200, 100))  # a ~100 px face
    _, backend = FaceDetector()._backend()
    assert faces_mod._takes_min_face(backend)
    assert len(backend.detect(frame, max_side=None, upsample=0, min_face=50)) == 1
    assert backend.detect(frame, max_side=None, upsample=0, min_face=200) == []  # twice the face: its scale is skipped
