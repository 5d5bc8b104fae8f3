"""``load_clip``: one call that gives everything a clip holds (sampled frames + 16 kHz audio).

The rule for what is loaded:

- frames: read whenever the file has them (video or still image); an audio-only file gives
  ``frames=None``. A video stream that is present but undecodable raises UnsupportedCodecError.
- audio: ``audio=True`` loads it if the file has an audio stream (else ``audio=None``),
  ``audio="required"`` raises NoAudioStreamError when there is none, ``audio=False`` skips it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from emollm.errors import NoAudioStreamError, UnsupportedCodecError
from emollm.media.audio import DEFAULT_SAMPLE_RATE, load_audio_from
from emollm.media.probe import MediaInfo, probe
from emollm.media.video import read_frames_from


@dataclass(eq=False)
class Clip:
    """A loaded clip. ``frames`` is uint8 (T, H, W, 3) RGB or None (audio-only file);
    ``frame_indices`` / ``timestamps_s`` describe each frame row; ``audio`` is float32 mono at
    ``sample_rate`` Hz, or None (no audio stream, or not asked for)."""

    info: MediaInfo
    frames: np.ndarray | None
    frame_indices: list[int]
    timestamps_s: list[float]
    audio: np.ndarray | None
    sample_rate: int

    @property
    def num_frames(self) -> int:
        return 0 if self.frames is None else int(self.frames.shape[0])

    @property
    def audio_duration_s(self) -> float:
        return 0.0 if self.audio is None else self.audio.shape[0] / self.sample_rate


def load_clip(
    path: str | os.PathLike[str],
    *,
    num_frames: int | None = 16,
    fps: float | None = None,
    indices: Sequence[int] | None = None,
    audio: bool | Literal["required"] = True,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    max_side: int | None = None,
) -> Clip:
    """Probe and load a video, audio-only file or still image.

    Frame selection: ``indices`` if given, else ``fps`` if given, else ``num_frames`` uniform
    frames (``num_frames=None`` reads every frame). A still image is one frame (index 0).
    See the module docstring for the audio rule.
    """
    if audio not in (True, False, "required"):
        raise ValueError(f"audio must be True, False or 'required', got {audio!r}")
    info = probe(path)

    frames = None
    frame_indices: list[int] = []
    timestamps: list[float] = []
    if info.has_video:
        if indices is not None:
            got = read_frames_from(info, indices, max_side=max_side)
        elif fps is not None:
            got = read_frames_from(info, fps=fps, max_side=max_side)
        else:
            got = read_frames_from(info, num_frames=num_frames, max_side=max_side)
        frames, frame_indices, timestamps = got.array, got.indices, got.timestamps_s
    elif "video" in info.unsupported_streams:
        raise UnsupportedCodecError(info.path, "the video stream uses a codec this PyAV/FFmpeg build cannot decode")

    samples = None
    if audio == "required" and not info.has_audio and "audio" not in info.unsupported_streams:
        raise NoAudioStreamError(info.path, f"audio is required but the {info.kind} file has no audio stream")
    if audio and (info.has_audio or "audio" in info.unsupported_streams):
        samples = load_audio_from(info, sample_rate)  # raises UnsupportedCodecError for the latter

    return Clip(
        info=info,
        frames=frames,
        frame_indices=frame_indices,
        timestamps_s=timestamps,
        audio=samples,
        sample_rate=sample_rate,
    )
