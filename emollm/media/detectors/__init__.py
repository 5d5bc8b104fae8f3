"""Face detectors: one registry, one entry per detector (docs/media.md, "Faces").

=============  =====================================================================================
``mtcnn``      MTCNN cascade (P-/R-/O-Net, Zhang et al. 2016) in torch; real weights from the
               facenet-pytorch 2.6.0 wheel (MIT), fetched by :mod:`emollm.assets`. Faces from 20 px,
               5 points. The default; falls back to ``dlib_hog`` (one warning) when its weights
               cannot be had.
``dlib_hog``   dlib's HOG frontal detector, with a second pass at twice the resolution on frames
               where the first finds nothing. Faces from about 45 px (22 px on the second pass).
``dlib_cnn``   dlib's MMOD CNN (``mmod_human_face_detector.dat`` from face-recognition-models).
               Slow on a CPU.
=============  =====================================================================================

Importing this package is cheap: torch and dlib load when a detector is first built.
The box maps were measured by ``benchmarks/face_detection.py --calibrate`` (docs/media.md).
"""

from __future__ import annotations

from emollm.media.detectors.base import (
    Box,
    BoxDetector,
    BoxMap,
    DetectorSpec,
    DetectorUnavailable,
    RawFace,
    detection_image,
    detector_names,
    detector_spec,
    register_detector,
    unknown_detector_message,
)

DEFAULT_DETECTOR = "mtcnn"


def _build_mtcnn(threshold: float | None) -> BoxDetector:
    from emollm.media.detectors.mtcnn import MtcnnDetector

    return MtcnnDetector(threshold)


def _build_dlib_hog(threshold: float | None) -> BoxDetector:
    from emollm.media.detectors.dlib_detectors import HogDetector

    return HogDetector(threshold)


def _build_dlib_cnn(threshold: float | None) -> BoxDetector:
    from emollm.media.detectors.dlib_detectors import MmodDetector, _mmod_model

    _mmod_model()  # fail here (and fall back) when the model file is missing
    return MmodDetector(threshold)


register_detector(
    DetectorSpec(
        name="mtcnn",
        build=_build_mtcnn,
        summary="MTCNN cascade in torch (facenet-pytorch 2.6.0 weights, MIT); faces from 20 px, 5 points",
        # benchmarks/face_detection.py --calibrate --frames 24: on the 76 sample faces both find,
        # the 68 landmarks fitted on MTCNN's box squared about its centre are 0.022 IOD (mean) from
        # those fitted on HOG's box; on this map 0.014 (MTCNN boxes are taller: brow to chin).
        box_map=BoxMap(dx=-0.028, dy=0.080, scale=0.891),
        fallback="dlib_hog",
        points=True,
    )
)
register_detector(
    DetectorSpec(
        name="dlib_hog",
        build=_build_dlib_hog,
        summary="dlib HOG frontal detector, second pass at 2x resolution where the first finds nothing",
    )
)
register_detector(
    DetectorSpec(
        name="dlib_cnn",
        build=_build_dlib_cnn,
        summary="dlib MMOD CNN (mmod_human_face_detector.dat); slow on CPU",
        # --calibrate --frames 8: 30 faces both find; 68-landmark disagreement with HOG-box
        # landmarks 0.040 IOD (mean) on the squared MMOD box, 0.035 on this map.
        box_map=BoxMap(dx=0.010, dy=0.081, scale=1.036),
        fallback="dlib_hog",
    )
)

__all__ = [
    "DEFAULT_DETECTOR",
    "Box",
    "BoxDetector",
    "BoxMap",
    "DetectorSpec",
    "DetectorUnavailable",
    "RawFace",
    "detection_image",
    "detector_names",
    "detector_spec",
    "register_detector",
    "unknown_detector_message",
]
