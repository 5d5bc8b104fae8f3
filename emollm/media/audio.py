"""Audio decoding to mono float32 at a fixed sample rate (16 kHz by default), with PyAV only.

Works on audio files (wav / flac / mp3 / m4a / ...) and on the audio stream of a video file.
Resampling is FFmpeg's (``aresample`` via :class:`av.AudioResampler`, flushed at the end so the
last few milliseconds are not lost); channels are down-mixed to mono by averaging them.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

from emollm.errors import CorruptMediaError, EmptyMediaError, NoAudioStreamError, UnsupportedCodecError
from emollm.log import get_logger
from emollm.media._io import open_container, translate_av_error
from emollm.media.probe import MediaInfo, probe

logger = get_logger(__name__)

DEFAULT_SAMPLE_RATE = 16_000


def load_audio(path: str | os.PathLike[str], sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """The file's (first decodable) audio stream as float32 mono samples at ``sample_rate`` Hz.

    Values are in [-1, 1] as decoded (no normalisation). Samples are returned as stored: a stream
    that starts late on the container's timeline (see ``MediaInfo.audio_start_s``) is not padded.
    Raises NoAudioStreamError when the file has no audio stream (video-only file, still image).
    """
    return load_audio_from(probe(path), sample_rate)


def load_audio_from(info: MediaInfo, sample_rate: int = DEFAULT_SAMPLE_RATE) -> np.ndarray:
    """:func:`load_audio` for a file already probed (saves the probe pass)."""
    path = Path(info.path)
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if not info.has_audio:
        if "audio" in info.unsupported_streams:
            raise UnsupportedCodecError(path, "the audio stream uses a codec this PyAV/FFmpeg build cannot decode")
        what = {"image": "a still image", "video": "video-only file"}.get(info.kind, "file")
        raise NoAudioStreamError(path, f"no audio stream ({what})")

    chunks: list[np.ndarray] = []
    decoded = 0
    with open_container(path) as container:
        stream = container.streams[info.audio_stream]
        # Resample only (planar float, channel layout kept), then average the channels here:
        # FFmpeg's own stereo->mono matrix sums L and R at -3 dB each, i.e. 1.41x the mean, which
        # can exceed [-1, 1]; the mean is what librosa / torchaudio users expect.
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        try:
            for frame in container.decode(stream):
                decoded += 1
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
            for out in resampler.resample(None):  # flush what the resampler still holds
                chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
        except av.FFmpegError as e:
            raise translate_av_error(e, path, f"decoding audio (after {decoded} frames)") from e
        except ValueError as e:
            # PyAV's resampler refuses input whose format / rate / layout changes mid-stream.
            raise CorruptMediaError(path, f"resampling audio (after {decoded} frames): {e}") from e

    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise EmptyMediaError(path, "the audio stream holds no samples")
    logger.debug("%s: %d audio samples at %d Hz", path, samples.size, sample_rate)
    return samples
