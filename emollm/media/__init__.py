"""Media layer: probe and decode clips (PyAV, Pillow), sample frames, 16 kHz audio, faces.

Shared by the dataset builder and inference. Every failure raises a typed
:class:`~emollm.errors.MediaError` naming the file and the cause (see docs/media.md).

>>> clip = load_clip("clip.mp4", num_frames=16)            # doctest: +SKIP
>>> faces = track_faces(clip.frames)                          # doctest: +SKIP
>>> crops = face_crops(clip.frames, faces, size=224)          # doctest: +SKIP

Face detectors are registered in :mod:`emollm.media.detectors` (``mtcnn`` by default,
``dlib_hog``, ``dlib_cnn``). dlib (the 68 landmarks, and its own detectors) is only imported when
faces are detected: the ``faces`` extra; torch only when MTCNN runs.
"""

from emollm.media._io import IMAGE_EXTENSIONS
from emollm.media.audio import DEFAULT_SAMPLE_RATE, load_audio, load_audio_from
from emollm.media.clip import Clip, load_clip
from emollm.media.detectors import DEFAULT_DETECTOR, detector_names, register_detector
from emollm.media.faces import (
    FACE_TEMPLATE_5,
    FaceCrops,
    FaceDetection,
    FaceDetector,
    FaceTrack,
    FaceTrackResult,
    align_face,
    alignment_matrix,
    associate_tracks,
    box_iou,
    bridge_gaps,
    face_crops,
    predictor_path,
    track_faces,
    transform_points,
)
from emollm.media.image import read_image
from emollm.media.probe import MediaInfo, probe
from emollm.media.video import Frames, read_frames, read_frames_from, sample_frame_indices

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_SAMPLE_RATE",
    "FACE_TEMPLATE_5",
    "IMAGE_EXTENSIONS",
    "Clip",
    "FaceCrops",
    "FaceDetection",
    "FaceDetector",
    "FaceTrack",
    "FaceTrackResult",
    "Frames",
    "MediaInfo",
    "align_face",
    "alignment_matrix",
    "associate_tracks",
    "box_iou",
    "bridge_gaps",
    "detector_names",
    "face_crops",
    "load_audio",
    "load_audio_from",
    "load_clip",
    "predictor_path",
    "probe",
    "read_frames",
    "read_frames_from",
    "read_image",
    "register_detector",
    "sample_frame_indices",
    "track_faces",
    "transform_points",
]
