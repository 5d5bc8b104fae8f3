"""Every broken input raises its typed MediaError naming the file; no raw av / PIL error leaks."""

from __future__ import annotations

import os

import av
import pytest

from emollm.errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaNotFoundError,
    NoAudioStreamError,
    NoVideoStreamError,
    UnsupportedCodecError,
)
from emollm.media import _io, load_audio, load_clip, probe, read_frames

EXPECTED = {
    "missing": MediaNotFoundError,
    "directory": MediaNotFoundError,
    "unreadable": MediaNotFoundError,
    "empty": EmptyMediaError,
    "truncated": CorruptMediaError,  # index (moov) at the end was cut off: does not open
    "truncated_faststart": CorruptMediaError,  # opens, lists 72 frames, holds 26
    "random": CorruptMediaError,
    "truncated_image": CorruptMediaError,
    "random_image": CorruptMediaError,
    "unknown_codec_video": UnsupportedCodecError,
    "unknown_codec_audio": UnsupportedCodecError,
}
OPERATIONS = {
    "probe": probe,
    "read_frames": lambda p: read_frames(p, num_frames=8),
    "load_audio": load_audio,
    "load_clip": load_clip,
}


@pytest.fixture
def unreadable_for_root(broken, monkeypatch):
    """root reads a mode-000 file anyway: make the readability check fail as it would for a user."""
    if os.geteuid() != 0:
        return
    real = _io._open_for_read

    def deny(path):
        if path == broken["unreadable"]:
            raise PermissionError(13, "Permission denied", str(path))
        real(path)

    monkeypatch.setattr(_io, "_open_for_read", deny)


def _check(error: MediaError, path, expected: type[MediaError]) -> None:
    assert type(error) is expected, f"{type(error).__name__}: {error}"
    assert path.name in str(error)
    assert error.path == str(path) and error.cause
    assert type(error).__module__ == "emollm.errors"


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_broken_file_raises_typed_error(broken, unreadable_for_root, key, operation):
    path = broken[key]
    with pytest.raises(MediaError) as info:
        OPERATIONS[operation](path)
    _check(info.value, path, EXPECTED[key])


def test_error_causes_are_specific(broken, unreadable_for_root):
    causes = {}
    for key in ("missing", "directory", "unreadable", "empty", "truncated_faststart"):
        with pytest.raises(MediaError) as info:
            probe(broken[key])
        causes[key] = info.value.cause
    assert "no such file" in causes["missing"]
    assert "directory" in causes["directory"]
    assert "permission" in causes["unreadable"]
    assert "0 bytes" in causes["empty"]
    assert "truncated" in causes["truncated_faststart"] and "72" in causes["truncated_faststart"]


def test_raw_av_error_is_kept_as_cause(broken):
    with pytest.raises(CorruptMediaError) as info:
        probe(broken["random"])
    assert isinstance(info.value.__cause__, av.FFmpegError)


def test_missing_stream_errors(broken):
    with pytest.raises(NoVideoStreamError) as info:
        read_frames(broken["audio_only_flac"])
    _check(info.value, broken["audio_only_flac"], NoVideoStreamError)
    with pytest.raises(NoAudioStreamError) as info:
        load_audio(broken["video_only"])
    _check(info.value, broken["video_only"], NoAudioStreamError)


def _cut(src, dst, fraction):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _remux(src, dst):
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst


@pytest.mark.parametrize("key", ["audio_only_wav", "audio_only_flac"])
def test_truncated_audio_file_detected(broken, tmp_path, key):
    path = _cut(broken[key], tmp_path / ("cut_" + broken[key].name), 0.6)
    with pytest.raises(CorruptMediaError, match="cut_audio_only"):
        load_audio(path)


def test_truncated_mkv_detected_by_duration(sample_dir, tmp_path):
    # Matroska lists no frame count: the cut shows as data ending before the declared duration.
    whole = _remux(sample_dir / "single_face.mp4", tmp_path / "whole.mkv")
    assert probe(whole).num_frames == 72
    cut = _cut(whole, tmp_path / "cut.mkv", 0.4)
    with pytest.raises(CorruptMediaError, match=r"cut\.mkv.*truncated"):
        read_frames(cut, num_frames=8)


def test_undecodable_video_with_good_audio(tmp_path):
    # Audio decodes, video does not: audio alone is readable, but frames / a clip are refused
    # instead of the video being silently dropped.
    import numpy as np

    from emollm.testing.samples import _patch_mov_fourcc

    path = tmp_path / "odd_video.mov"
    with av.open(str(path), "w") as out:
        video = out.add_stream("mjpeg", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuvj420p"
        audio = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        for i in range(5):
            img = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="rgb24")
            for packet in video.encode(img):
                out.mux(packet)
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
            samples.sample_rate, samples.pts = 16000, i * 1600
            for packet in audio.encode(samples):
                out.mux(packet)
        for packet in [*video.encode(None), *audio.encode(None)]:
            out.mux(packet)
    _patch_mov_fourcc(path, b"jpeg", b"zzzz")

    info = probe(path)
    assert (info.kind, info.has_video, info.has_audio) == ("video", False, True)
    assert info.unsupported_streams == ("video",)
    assert len(load_audio(path)) == pytest.approx(8000, abs=400)
    for operation in (read_frames, load_clip):
        with pytest.raises(UnsupportedCodecError, match="odd_video.mov"):
            operation(path)
