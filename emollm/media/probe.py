"""Probe a media file: what it holds (video / audio / still image), how long, how many frames.

``probe`` succeeding means the media layer can read the file: it checks the path, opens the
container, and demuxes every packet (cheap: nothing is decoded) to count the frames exactly and
to detect truncation (fewer packets than declared, data ending well before the declared
duration, an incomplete last packet). A container's own frame count can be wrong in
both directions: MP4 edit lists make it count frames that are never shown (``no_face.mp4``
declares 98, shows 95), and a truncated file still declares the frames it lost.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av

from emollm.errors import CorruptMediaError, EmptyMediaError, UnsupportedCodecError
from emollm.log import get_logger
from emollm.media._io import (
    IMAGE_EXTENSIONS,
    av_errors,
    check_readable,
    is_attached_picture,
    open_container,
)

logger = get_logger(__name__)

MediaKind = Literal["video", "audio", "image"]

# FFmpeg demuxers that read a single still image ("image2" by extension, "<codec>_pipe" by content).
_IMAGE_DEMUXERS = ("image2", "image2pipe")


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` found in a file.

    ``has_video`` is True when frames can be read: a decodable video stream or a still image.
    ``num_frames`` is exact (counted, see the module docstring); 1 for an image, 0 for audio-only.
    ``fps`` is the video stream's average frame rate (None for images and audio-only files).
    ``audio_start_s`` is where the audio stream starts on the container's timeline; usually 0, but
    a few files start their audio later (``face_noface.mov``: 2.43 s). ``load_audio`` returns the
    samples as stored, without padding that offset.
    ``unsupported_streams`` lists stream types ("video" / "audio") present in the file whose codec
    this PyAV build cannot decode; reading them raises UnsupportedCodecError.
    """

    path: str
    kind: MediaKind
    duration_s: float
    has_video: bool
    has_audio: bool
    fps: float | None = None
    num_frames: int = 0
    width: int | None = None
    height: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_duration_s: float | None = None
    audio_start_s: float | None = None
    container: str | None = None
    video_stream: int | None = None  # index of the stream read for frames in the container
    audio_stream: int | None = None  # index of the stream read for audio in the container
    unsupported_streams: tuple[str, ...] = field(default=())


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Inspect a media file. Raises a typed MediaError for any file the media layer cannot read."""
    p = check_readable(path)
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return probe_image(p)
    with open_container(p) as container:
        return _probe_container(p, container)


def probe_image(path: str | os.PathLike[str]) -> MediaInfo:
    """Probe a still image. The image is fully decoded so that a truncated file fails here."""
    from emollm.media.image import decode_image  # Pillow loads only for images

    p = check_readable(path)
    array, fmt = decode_image(p)
    return MediaInfo(
        path=str(p),
        kind="image",
        duration_s=0.0,
        has_video=True,
        has_audio=False,
        num_frames=1,
        width=int(array.shape[1]),
        height=int(array.shape[0]),
        video_codec=fmt,
        container=fmt,
    )


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def _first_decodable(streams: list[av.stream.Stream]) -> av.stream.Stream | None:
    # A stream whose codec FFmpeg does not know, or has no decoder for, has no codec context.
    return next((s for s in streams if s.codec_context is not None), None)


def _probe_container(p: Path, container: av.container.InputContainer) -> MediaInfo:
    video_streams = [s for s in container.streams.video if not is_attached_picture(s)]
    audio_streams = list(container.streams.audio)
    video = _first_decodable(video_streams)
    audio = _first_decodable(audio_streams)
    unsupported = tuple(
        kind
        for kind, found, present in (("video", video, video_streams), ("audio", audio, audio_streams))
        if found is None and present
    )
    if video is None and audio is None:
        if unsupported:
            raise UnsupportedCodecError(
                p, f"the {' and '.join(unsupported)} stream uses a codec this PyAV/FFmpeg build cannot decode"
            )
        raise EmptyMediaError(p, f"no audio or video stream in the {container.format.name} container")

    container_duration = container.duration / av.time_base if container.duration else None
    container_start = container.start_time / av.time_base if container.start_time else 0.0
    fields: dict = {
        "path": str(p),
        "container": container.format.name,
        "unsupported_streams": unsupported,
    }

    if audio is not None:
        cc = audio.codec_context
        audio_start = _seconds(audio.start_time, audio.time_base)
        fields.update(
            has_audio=True,
            audio_stream=audio.index,
            audio_codec=cc.name,
            audio_sample_rate=cc.sample_rate or None,
            audio_channels=cc.channels or None,
            audio_duration_s=_seconds(audio.duration, audio.time_base) or container_duration,
            audio_start_s=round(audio_start - container_start, 6) if audio_start is not None else None,
        )
    else:
        fields["has_audio"] = False

    if video is None:
        _count_packets(p, container, [audio])
        duration = container_duration or fields.get("audio_duration_s") or 0.0
        # A video stream with an undecodable codec still makes this a video file (has_video False).
        kind = "video" if "video" in unsupported else "audio"
        return MediaInfo(kind=kind, duration_s=float(duration), has_video=False, num_frames=0, **fields)

    cc = video.codec_context
    rate = video.average_rate or video.guessed_rate or video.base_rate
    fps = float(rate) if rate else None
    num_frames = _count_packets(p, container, [video] + ([audio] if audio is not None else []))
    if num_frames == 0:
        raise EmptyMediaError(p, "the video stream holds no frames")
    duration = container_duration or _seconds(video.duration, video.time_base)
    if not duration and fps:
        duration = num_frames / fps
    is_image = container.format.name in _IMAGE_DEMUXERS or container.format.name.endswith("_pipe")
    return MediaInfo(
        kind="image" if is_image else "video",
        duration_s=0.0 if is_image else float(duration or 0.0),
        has_video=True,
        fps=None if is_image else fps,
        num_frames=num_frames,
        width=cc.width or None,
        height=cc.height or None,
        video_codec=cc.name,
        video_stream=video.index,
        **fields,
    )


# Containers whose header states the duration (not estimated from the bitrate): a file that
# demuxes to well short of it has lost its tail. MP4 / MOV / AVI also state the video frame
# count, checked separately.
_HEADER_DURATION_FORMATS = ("matroska", "webm", "mov", "mp4", "flv", "asf", "wav", "flac")


def _count_packets(p: Path, container: av.container.InputContainer, streams: list[av.stream.Stream]) -> int:
    """Demux every packet (nothing is decoded): count the video frames that will be shown and
    detect a truncated file. Returns the frame count of the first stream (0 when it is audio).

    Packets flagged ``is_discard`` belong to the part of the stream an edit list cuts away (the
    decoder drops them), so they are not frames; they still count against the container's
    declared total when checking for truncation.
    """
    shown: Counter[int] = Counter()
    stored: Counter[int] = Counter()
    end_s: dict[int, float] = {}
    last_corrupt: dict[int, bool] = {}
    corrupt = 0
    wanted = {s.index for s in streams}
    with av_errors(p, "reading packets"):
        for packet in container.demux():
            stream = packet.stream
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            # Where the data ends, over every stream (a data or second audio track may be the
            # longest one and set the container's duration).
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is not None and stream.time_base is not None:
                end = float((ts + (packet.duration or 0)) * stream.time_base)
                end_s[stream.index] = max(end, end_s.get(stream.index, end))
            if stream.index not in wanted:
                continue
            stored[stream.index] += 1
            if not packet.is_discard:
                shown[stream.index] += 1
            corrupt += packet.is_corrupt
            last_corrupt[stream.index] = packet.is_corrupt

    for stream in streams:
        # Only video: for audio, MOV counts PCM *samples* as frames (8000 "frames" in 10 packets).
        declared = (stream.frames or 0) if stream.type == "video" else 0
        if declared and stored[stream.index] < declared:
            raise CorruptMediaError(
                p,
                f"truncated: the container declares {declared} video frames but only "
                f"{stored[stream.index]} are in the file",
            )
        if last_corrupt.get(stream.index):
            # FFmpeg flags a packet it could only read in part; at the very end that is a cut file.
            raise CorruptMediaError(p, f"truncated: the last {stream.type} packet is incomplete")
    fmt = container.format.name
    if container.duration and end_s and any(name in fmt.split(",") for name in _HEADER_DURATION_FORMATS):
        declared_end = (container.duration + (container.start_time or 0)) / av.time_base
        found_end = max(end_s.values())
        if found_end < declared_end - max(0.5, 0.05 * declared_end):
            raise CorruptMediaError(
                p, f"truncated: the container declares {declared_end:.2f} s but its data ends at {found_end:.2f} s"
            )
    if corrupt:
        logger.warning("%s: %d packet(s) flagged corrupt by the demuxer", p, corrupt)
    return shown[streams[0].index] if streams[0].type == "video" else 0
