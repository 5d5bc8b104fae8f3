"""probe(): what a user sees about real files (values checked against the files themselves)."""

from __future__ import annotations

import dataclasses

import pytest

from emollm.media import MediaInfo, probe


def test_probe_single_face_mp4(sample_dir):
    info = probe(sample_dir / "single_face.mp4")
    assert info.kind == "video"
    assert (info.width, info.height) == (640, 360)
    assert info.video_codec == "h264"
    assert info.fps == pytest.approx(30.0)
    assert info.num_frames == 72
    assert info.duration_s == pytest.approx(2.42, abs=0.02)
    assert info.has_video and info.has_audio
    assert info.audio_codec.startswith("mp3")
    assert (info.audio_sample_rate, info.audio_channels) == (44100, 2)
    assert info.path == str(sample_dir / "single_face.mp4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_frames = 1  # type: ignore[misc]


def test_probe_counts_shown_frames_not_declared(sample_dir):
    # no_face.mp4 declares 98 frames, but an edit list cuts 3 away: 95 are ever decoded.
    info = probe(sample_dir / "no_face.mp4")
    assert info.num_frames == 95
    assert (info.width, info.height, info.video_codec) == (960, 540, "h264")
    assert info.audio_codec == "aac"


@pytest.mark.parametrize("name", ["face_noface.mov", "noface_face.mov"])
def test_probe_hevc_mov(sample_dir, name):
    info = probe(sample_dir / name)
    assert info.kind == "video"
    assert info.video_codec == "hevc"
    assert (info.width, info.height) == (960, 540)
    assert info.num_frames == 169
    assert info.has_audio and info.audio_codec == "aac"
    # The video is the second stream in these files: the right one must have been picked.
    assert info.video_stream == 1 and info.audio_stream == 0


def test_probe_reports_late_audio_start(sample_dir):
    assert probe(sample_dir / "face_noface.mov").audio_start_s == pytest.approx(2.43, abs=0.01)
    assert probe(sample_dir / "noface_face.mov").audio_start_s == pytest.approx(0.0, abs=0.01)


def test_probe_long_clip(sample_dir):
    info = probe(sample_dir / "WolfgangLanger_Pexels.mp4")
    assert info.num_frames == 472
    assert info.fps == pytest.approx(24000 / 1001)
    assert info.audio_sample_rate == 48000
    assert info.duration_s == pytest.approx(19.69, abs=0.05)


@pytest.mark.parametrize(("name", "size"), [("single_face.jpg", (572, 562)), ("multi_face.jpg", (1000, 667))])
def test_probe_image(sample_dir, name, size):
    info = probe(sample_dir / name)
    assert info.kind == "image"
    assert (info.width, info.height) == size
    assert info.num_frames == 1 and info.has_video and not info.has_audio
    assert info.fps is None and info.duration_s == 0.0


def test_probe_generated_audio_only(broken):
    wav = probe(broken["audio_only_wav"])
    assert wav.kind == "audio" and not wav.has_video and wav.has_audio
    assert wav.num_frames == 0 and wav.fps is None and wav.width is None
    assert (wav.audio_sample_rate, wav.audio_channels) == (44100, 2)
    assert wav.duration_s == pytest.approx(1.5, abs=0.01)
    flac = probe(broken["audio_only_flac"])
    assert (flac.kind, flac.audio_codec, flac.audio_sample_rate, flac.audio_channels) == ("audio", "flac", 48000, 1)


def test_probe_generated_video_only(broken):
    info = probe(broken["video_only"])
    assert info.kind == "video" and info.has_video and not info.has_audio
    assert (info.num_frames, info.width, info.height) == (12, 160, 120)
    assert info.fps == pytest.approx(10.0)
    assert isinstance(info, MediaInfo)
