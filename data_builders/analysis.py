"""One analysis per clip: decode once, track the main speaker's face once, measure everything on it.

:func:`analyse_clip` samples the clip's frames at ``build.au_fps`` (over the first
``build.max_duration_s``), tracks the main face over them (``media.face``: the detector registry,
bridging missed frames), decodes the 16 kHz mono audio once, finds the voiced frames, and (for the
built-in AU source) measures the AUs on the same landmarks. The builder's worker, the expression
model and the audio cues all read this one :class:`ClipAnalysis`, so the AUs, the peak frame, the
face crops and the expression votes see the same face in the same frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from data_builders.au import AUSeries
from emollm.errors import MediaError
from emollm.log import get_logger

log = get_logger(__name__)

# 2: the encoders' extra frames take the face by faces.follow (O-Net on the nearest AU frame's box), and a
# bridged gap searches for faces from 0.4 of the expected size: feature caches and AU stages of /1 are redone
# 3: between keyframes the main face's last box is checked by O-Net before any search around it
VERSION = "analysis/3"


@dataclass(eq=False)
class ClipAnalysis:
    """What one decode of a clip gave: ``frames`` (the sampled frames, or None without video),
    ``landmarks`` (T, 68, 2) of the main face (NaN where it was not seen), ``audio`` 16 kHz mono (or
    None), ``voiced`` (T,) bool at the frames' times, ``aus`` (built-in source only), ``flags``."""

    info: Any  # MediaInfo
    frames: Any = None  # emollm.media.Frames
    track: Any = None  # FaceTrackResult
    landmarks: np.ndarray | None = None
    audio: np.ndarray | None = None
    voiced: np.ndarray | None = None
    aus: AUSeries | None = None
    flags: list[str] = field(default_factory=list)
    au_positions: list[int] = field(default_factory=list)  # rows of ``frames`` the AUs were measured on
    encoder_positions: list[int] = field(default_factory=list)  # rows the frozen encoders read (encoder_frames=True)
    sample_rate: int = 16000

    def encoder_clip(self):  # noqa: ANN201 - emollm.media.Clip
        """The encoders' view of this decode: the ``media`` sampling's frames and the audio, as a Clip."""
        from emollm.media.clip import Clip

        pos = self.encoder_positions
        frames = self.frames.array[pos] if self.frames is not None and pos else None
        return Clip(info=self.info, frames=frames,
                    frame_indices=[self.frames.indices[p] for p in pos] if frames is not None else [],
                    timestamps_s=[self.frames.timestamps_s[p] for p in pos] if frames is not None else [],
                    audio=self.audio, sample_rate=self.sample_rate)  # fmt: skip

    def encoder_crops(self, size: int):  # noqa: ANN201 - emollm.media.FaceCrops or None
        """Aligned crops of the main face at the encoder frames where it was seen (None: no face there)."""
        from emollm.media.faces import FaceCrops, align_face

        if self.frames is None or self.landmarks is None:
            return None
        seen = [p for p in self.encoder_positions if not np.isnan(self.landmarks[p, 0, 0])]
        if not seen:
            return None
        images = np.stack([align_face(self.frames.array[p], self.landmarks[p], size) for p in seen])
        return FaceCrops(images=images, positions=[self.encoder_positions.index(p) for p in seen])

    def frame_at(self, frame_index: int) -> np.ndarray | None:
        """The decoded frame with source index ``frame_index`` as a (1, H, W, 3) batch, if decoded."""
        if self.frames is None or frame_index not in self.frames.indices:
            return None
        p = self.frames.indices.index(frame_index)
        return self.frames.array[p : p + 1]

    @property
    def still(self) -> bool:
        return self.info.kind == "image"

    @property
    def face_positions(self) -> list[int]:
        if self.landmarks is None:
            return []
        return [int(i) for i in np.flatnonzero(~np.isnan(self.landmarks[:, 0, 0]))]


def sample_indices(info, build) -> tuple[list[int], list[str]]:  # noqa: ANN001 - MediaInfo, BuildConfig
    """Source frame indices analysed for AUs: ``build.au_fps`` over the first ``max_duration_s``."""
    flags: list[str] = []
    if info.kind == "image":
        return [0], flags
    src_fps = info.fps or 25.0
    total = info.num_frames
    cap = int(np.floor(build.max_duration_s * src_fps))
    if total > cap:
        flags.append("truncated_to_max_duration")
        total = max(1, cap)
    step = max(1.0, src_fps / build.au_fps)
    indices = sorted({int(round(i * step)) for i in range(int(np.ceil(total / step)))} - {total})
    return [i for i in indices if i < total] or [0], flags


def _track_main_face(out: ClipAnalysis, cfg: Any, indices: list[int], stream: Any) -> None:
    """``out.track`` and ``out.landmarks``: the main face over the AU frames, then at the encoders'
    extra frames (``encoder_frames=True``).

    The track runs over the AU frames alone, exactly as a build without encoder frames sees the clip
    (keyframe tracking depends on which frames it is given), so ``emollm build``, ``features`` and
    ``infer`` of one clip measure the same landmarks, AUs and peak. An extra frame takes the main face
    found near its box at the AU frame closest in time (none there: no face at that frame either),
    followed from that box (``faces.follow``: the detector's last stage checks and refines it, a
    search around it where that sees no face). ``stream``: the clip's :class:`~emollm.media.video.FrameStream`,
    read row by row while it decodes."""
    from emollm.media.faces import follow, track_faces

    face = cfg.media.face
    detector = _detector(cfg, out.still)
    au = out.au_positions
    measured = set(au)
    extra = [p for p in range(len(stream.indices)) if p not in measured]
    # a video's main face must be seen in 2 sampled frames: one stray detection is no speaker
    out.track = track_faces(stream.rows(au, indices=None if extra else stream.indices), detector,
                            iou_threshold=face.iou_threshold, max_gap=face.max_gap, bridge=face.bridge,
                            min_frames=2 if len(indices) >= 5 else 1, keyframe_every=face.keyframe_every)  # fmt: skip
    for k, lm in enumerate(out.track.landmarks):
        if lm is not None:
            out.landmarks[au[k]] = lm
    times = np.asarray([stream.indices[p] for p in au])
    for pos in extra:
        box = out.track.boxes[int(np.argmin(np.abs(times - stream.indices[pos])))]
        found = follow(stream[pos], box, detector) if box is not None else None
        if found is not None:
            out.landmarks[pos] = found.landmarks
    if out.track.num_tracks > 1 or any(len(d) > 1 for d in out.track.detections):
        out.flags.append("multiple_faces")


def _detector(cfg, still: bool):  # noqa: ANN001, ANN202
    import dataclasses

    from emollm.media.from_config import face_detector_for

    face = cfg.media.face
    if not still and cfg.build.detect_max_side < face.detect_max_side:
        face = dataclasses.replace(face, detect_max_side=cfg.build.detect_max_side)
    return face_detector_for(face)


def needs_audio(cfg) -> bool:  # noqa: ANN001
    b = cfg.build
    return b.asr != "none" or b.tone != "none" or b.speech_aware_peak


def encoder_indices(info, media) -> list[int]:  # noqa: ANN001 - MediaInfo, MediaConfig
    """The source frames the frozen encoders read: ``media.num_frames`` uniform (or ``media.fps``)."""
    from emollm.media.video import sample_frame_indices

    if info.kind == "image":
        return [0]
    if media.fps is not None:
        return sample_frame_indices(info.num_frames, fps=media.fps, src_fps=info.fps, path=info.path)
    if media.num_frames is None:
        return list(range(info.num_frames))
    return sample_frame_indices(info.num_frames, num_frames=media.num_frames, src_fps=info.fps, path=info.path)


def analyse_clip(info, cfg, *, video: bool = True, faces: bool = True, audio: bool | None = None,  # noqa: ANN001
                 aus: bool | None = None, encoder_frames: bool = False, overlap: bool = False) -> ClipAnalysis:
    """Analyse one probed clip (``emollm.media.probe``) with ``cfg``'s build and media settings.

    ``audio`` None: decoded when a cue needs it (ASR, tone, speech-aware peak); ``aus`` None: measured
    when ``build.au_source`` is ``builtin``. ``encoder_frames``: also decode the frames the frozen
    encoders read (``media`` sampling) in the same pass and track the face over
    them too, for :meth:`ClipAnalysis.encoder_clip` / :meth:`~ClipAnalysis.encoder_crops`; the AUs are
    still measured on the ``build.au_fps`` frames only. ``overlap``: decode the frames in a background
    thread while the audio decodes and the face track reads the first frames (less wall time for one
    clip, as ``emollm infer`` wants; the same results and CPU time; a builder's workers keep it off, their
    cores being busy with other clips). An unreadable audio stream is flagged
    (``audio_unreadable``), never fatal; an undecodable video raises MediaError."""
    from data_builders import tone
    from data_builders.au.landmark_au import series_from_landmarks
    from data_builders.au.sources import get_au_source
    from emollm.media.audio import load_audio_from
    from emollm.media.video import FrameStream

    b = cfg.build
    out = ClipAnalysis(info=info)
    audio = needs_audio(cfg) if audio is None else audio
    aus = get_au_source(b.au_source).from_analysis if aus is None else aus
    stream = None
    if video and info.has_video:
        indices, sample_flags = sample_indices(info, b)
        # One resolution for every consumer, so a build and an `infer` of the same clip measure the same
        # face: build.frame_max_side, or media.max_side when that is smaller.
        max_side = min(b.frame_max_side, cfg.media.max_side or b.frame_max_side)
        wanted = indices
        if encoder_frames:
            enc = encoder_indices(info, cfg.media)
            wanted = sorted(set(indices) | set(enc))
        stream = FrameStream(info, wanted, max_side=max_side, background=overlap)
    try:
        if audio and info.has_audio:
            try:
                out.audio = load_audio_from(info, 16000)
            except MediaError as exc:
                log.warning("%s: audio unreadable: %s", info.path, getattr(exc, "cause", exc))
                out.flags.append("audio_unreadable")
        if stream is None:
            return out
        out.flags += sample_flags
        row = {idx: k for k, idx in enumerate(wanted)}
        out.au_positions = [row[i] for i in indices]
        out.encoder_positions = [row[i] for i in enc] if encoder_frames else []
        n = len(wanted)
        out.landmarks = np.full((n, 68, 2), np.nan)
        if faces:
            _track_main_face(out, cfg, indices, stream)
        out.frames = stream.result()
    finally:
        if stream is not None:
            stream.close()
    times = np.asarray(out.frames.timestamps_s, dtype=np.float64)
    if out.audio is not None and b.speech_aware_peak and not out.still:
        out.voiced = tone.voiced_at(out.audio, times, silence_dbfs=b.silence_dbfs)
    else:
        out.voiced = np.zeros(n, dtype=bool)
    if aus:
        au = out.au_positions
        out.aus = series_from_landmarks(
            out.landmarks[au], [out.frames.indices[p] for p in au], times[au], still=out.still, baseline=b.baseline,
            percentile=b.baseline_percentile, presence_threshold=b.presence_threshold, flags=out.flags,
            num_tracks=out.track.num_tracks if out.track is not None else 0,
        )  # fmt: skip
        out.aus.voiced = out.voiced[au]
    return out


__all__ = ["ClipAnalysis", "analyse_clip", "encoder_indices", "needs_audio", "sample_indices"]
