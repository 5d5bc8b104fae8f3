"""The media layer driven by the ``media`` section of an emollm config (one mapping, used by every command)."""

from __future__ import annotations

import os

from emollm.config import FaceConfig, MediaConfig
from emollm.media.clip import Clip, load_clip
from emollm.media.faces import FaceDetector, FaceTrackResult, track_faces


def load_clip_for(media: MediaConfig, path: str | os.PathLike[str], *, audio: bool | str = True) -> Clip:
    """``load_clip`` with the config's frame sampling, frame size and audio rate."""
    return load_clip(
        path,
        num_frames=media.num_frames,
        fps=media.fps,
        audio=audio,  # type: ignore[arg-type]
        sample_rate=media.sample_rate,
        max_side=media.max_side,
    )


def face_detector_for(face: FaceConfig, *, detect_max_side: int | None = None) -> FaceDetector:
    """The registered detector ``face.detector`` with the config's settings (``detect_max_side``
    overrides ``face.detect_max_side``, e.g. the builder's smaller ``build.detect_max_side``)."""
    return FaceDetector(
        face.detector,
        upsample=face.upsample,
        detect_max_side=detect_max_side if detect_max_side is not None else face.detect_max_side,
    )


def track_faces_for(face: FaceConfig, clip: Clip, detector: FaceDetector | None = None) -> FaceTrackResult:
    """Track the main face over a loaded clip's frames (no frames: an empty result)."""
    detector = detector or face_detector_for(face)
    frames = clip.frames if clip.frames is not None else []
    result = track_faces(
        frames, detector, iou_threshold=face.iou_threshold, max_gap=face.max_gap, bridge=face.bridge,
        keyframe_every=face.keyframe_every,
    )  # fmt: skip
    result.frame_indices = list(clip.frame_indices)
    return result
