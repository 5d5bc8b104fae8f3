"""dlib's two face detectors: the HOG frontal detector and the MMOD CNN.

Both ship with ``dlib-bin`` (the code) and ``face-recognition-models`` (the CNN's
``mmod_human_face_detector.dat`` and the 68-point predictor): the ``faces`` extra.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

from emollm.errors import EmollmError, MissingDependencyError
from emollm.log import get_logger
from emollm.media.detectors.base import RawFace, detection_image, scale_face

logger = get_logger(__name__)

PREDICTOR_FILENAME = "shape_predictor_68_face_landmarks.dat"
MMOD_FILENAME = "mmod_human_face_detector.dat"


def face_model_path(filename: str, feature: str = "face landmarks") -> Path:
    """Where ``face-recognition-models`` keeps one of its model files.

    The package itself cannot be imported on new setuptools (it needs ``pkg_resources``), so its
    folder is found without importing it.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("face-recognition-models", "faces", feature)
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / filename
    if not path.is_file():
        raise EmollmError(
            f"the face-recognition-models package is installed but {path} is missing",
            hint="pip install --force-reinstall face-recognition-models",
        )
    return path


def import_dlib(feature: str = "face detection"):  # noqa: ANN201 - the dlib module
    try:
        import dlib
    except ImportError as e:
        raise MissingDependencyError("dlib-bin", "faces", feature) from e
    return dlib


@functools.lru_cache(maxsize=1)
def _hog_model():
    dlib = import_dlib()
    logger.debug("loading dlib's HOG frontal face detector")
    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=1)
def _mmod_model():
    dlib = import_dlib()
    path = face_model_path(MMOD_FILENAME, "the dlib CNN face detector")
    logger.debug("loading dlib's MMOD CNN face detector from %s", path)
    return dlib.cnn_face_detection_model_v1(str(path))


def _rect_box(rect) -> tuple[float, float, float, float]:  # noqa: ANN001 - dlib.rectangle
    # dlib rectangles are inclusive pixel indices: edges are left .. right + 1.
    return (float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1))


class HogDetector:
    """dlib's HOG + linear SVM frontal detector (80 px window), multi-scale.

    A frame where nothing is found is searched once more at twice the resolution (from the
    full-resolution pixels where the frame has them): dlib's ``upsample=1`` pass, paid only on
    frames that need it. ``threshold`` is dlib's ``adjust_threshold`` (default 0).
    """

    def __init__(self, threshold: float | None = None, *, retry: bool = True):
        self.threshold = 0.0 if threshold is None else float(threshold)
        self.retry = retry

    def _run(self, frame: np.ndarray, max_side: int | None, upsample: int) -> list[RawFace]:
        image, sx, sy = detection_image(frame, max_side, upsample)
        rects, scores, _ = _hog_model().run(np.ascontiguousarray(image), 0, self.threshold)
        return [scale_face(RawFace(_rect_box(r), float(s)), sx, sy) for r, s in zip(rects, scores, strict=True)]

    def detect(self, frame: np.ndarray, *, max_side: int | None, upsample: int) -> list[RawFace]:
        found = self._run(frame, max_side, upsample)
        if not found and self.retry:
            found = self._run(frame, max_side, upsample + 1)
        return found


class MmodDetector:
    """dlib's MMOD CNN face detector (``mmod_human_face_detector.dat``): finds faces from about
    60-80 px (half with ``upsample=1``), turned heads too; ~50x the cost of HOG on a CPU.
    ``threshold``: the minimum MMOD confidence (default 0)."""

    def __init__(self, threshold: float | None = None):
        self.threshold = 0.0 if threshold is None else float(threshold)

    def detect(self, frame: np.ndarray, *, max_side: int | None, upsample: int) -> list[RawFace]:
        image, sx, sy = detection_image(frame, max_side, upsample)
        found = _mmod_model()(np.ascontiguousarray(image), 0)
        return [
            scale_face(RawFace(_rect_box(d.rect), float(d.confidence)), sx, sy)
            for d in found
            if d.confidence >= self.threshold
        ]
