"""load_audio() and load_clip(): 16 kHz mono float32 audio of the right length, clip rules."""

from __future__ import annotations

import numpy as np
import pytest

from emollm.errors import NoAudioStreamError, NoVideoStreamError
from emollm.media import load_audio, load_clip, read_frames


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize(
    ("name", "seconds"),
    [
        ("single_face.mp4", 2.42),  # mp3 44.1 kHz stereo inside mp4
        ("no_face.mp4", 3.95),  # aac 44.1 kHz stereo
        ("face_noface.mov", 3.99),  # aac stream that starts 2.43 s in; returned as stored
        ("WolfgangLanger_Pexels.mp4", 19.69),  # aac 48 kHz
    ],
)
def test_audio_of_videos_is_16k_mono_float32(sample_dir, name, seconds):
    audio = load_audio(sample_dir / name)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) / 16000 == pytest.approx(seconds, abs=0.1)
    assert np.all(np.abs(audio) <= 1.0)


def test_real_speech_audio_is_not_silent(sample_dir):
    assert load_audio(sample_dir / "no_face.mp4").std() > 0.01


@pytest.mark.parametrize(("key", "seconds"), [("audio_only_wav", 1.5), ("audio_only_flac", 1.0)])
@pytest.mark.parametrize("rate", [16000, 22050])
def test_generated_sine_keeps_pitch_and_length(broken, key, seconds, rate):
    audio = load_audio(broken[key], sample_rate=rate)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) / rate == pytest.approx(seconds, abs=0.1)
    # A wrong rate or a bad downmix would move the 440 Hz tone or change its level.
    assert _dominant_hz(audio, rate) == pytest.approx(440, abs=3)
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)


def test_clip_of_a_video(sample_dir):
    clip = load_clip(sample_dir / "single_face.mp4", num_frames=8)
    assert clip.frames.shape == (8, 360, 640, 3) and clip.frames.dtype == np.uint8
    assert clip.frame_indices == [4, 13, 22, 31, 40, 49, 58, 67]
    assert len(clip.timestamps_s) == 8
    assert clip.sample_rate == 16000
    assert clip.audio_duration_s == pytest.approx(2.42, abs=0.1)
    assert clip.info.kind == "video" and clip.num_frames == 8


def test_clip_selection_precedence(sample_dir):
    path = sample_dir / "single_face.mp4"
    assert load_clip(path, indices=[1, 2], audio=False).frame_indices == [1, 2]
    assert load_clip(path, fps=10, audio=False).frame_indices == list(range(0, 72, 3))
    assert load_clip(path, num_frames=None, audio=False).num_frames == 72
    assert load_clip(path, num_frames=4, audio=False).audio is None


def test_clip_of_an_image(sample_dir):
    clip = load_clip(sample_dir / "single_face.jpg")
    assert clip.frames.shape == (1, 562, 572, 3)
    assert clip.frame_indices == [0] and clip.audio is None
    with pytest.raises(NoAudioStreamError, match="single_face.jpg"):
        load_clip(sample_dir / "single_face.jpg", audio="required")


def test_clip_of_audio_only_file(broken):
    clip = load_clip(broken["audio_only_wav"], audio="required")
    assert clip.frames is None and clip.frame_indices == [] and clip.num_frames == 0
    assert clip.audio_duration_s == pytest.approx(1.5, abs=0.1)
    with pytest.raises(NoVideoStreamError, match="audio_only.wav"):
        read_frames(broken["audio_only_wav"])


def test_clip_of_video_only_file(broken):
    clip = load_clip(broken["video_only"], num_frames=4)
    assert clip.frames.shape == (4, 120, 160, 3) and clip.audio is None
    with pytest.raises(NoAudioStreamError, match="video_only.mp4"):
        load_clip(broken["video_only"], audio="required")
    with pytest.raises(NoAudioStreamError, match="video_only.mp4"):
        load_audio(broken["video_only"])


def test_bad_audio_argument(sample_dir):
    with pytest.raises(ValueError):
        load_clip(sample_dir / "single_face.mp4", audio="maybe")  # type: ignore[arg-type]


def test_cover_art_does_not_make_an_audio_file_a_video(broken):
    clip = load_clip(broken["audio_with_cover"])
    assert clip.info.kind == "audio" and not clip.info.has_video
    assert clip.frames is None
    assert clip.audio_duration_s == pytest.approx(1.0, abs=0.1)
    with pytest.raises(NoVideoStreamError, match="audio_with_cover.mp3"):
        read_frames(broken["audio_with_cover"])
