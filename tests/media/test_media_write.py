"""`emollm.media.write.cut_clip`: a segment of a real video, with or without a new audio track."""

from __future__ import annotations

import numpy as np
import pytest

from emollm.errors import MediaError
from emollm.media import load_audio, probe, read_frames
from emollm.media.write import cut_clip
from emollm.testing.samples import sample_path


@pytest.fixture(scope="module")
def source():
    return sample_path("WolfgangLanger_Pexels.mp4")


def test_a_segment_keeps_size_and_rate_and_starts_at_zero(source, tmp_path):
    info = probe(source)
    out = cut_clip(source, tmp_path / "seg.mp4", start=11.0, end=13.0)
    seg = probe(out)
    assert (seg.width, seg.height) == (info.width, info.height)
    assert seg.fps == pytest.approx(info.fps, rel=1e-3)
    assert seg.duration_s == pytest.approx(2.0, abs=0.1)
    assert not seg.has_audio  # no audio given: none written
    # The segment's first frame is the source's frame at 11 s (re-encoded: close, not equal), not its first.
    first = read_frames(out, [0]).array[0].astype(float)
    at_11 = read_frames(source, [round(11.0 * info.fps)]).array[0].astype(float)
    at_0 = read_frames(source, [0]).array[0].astype(float)
    assert np.abs(first - at_11).mean() < 8 < np.abs(first - at_0).mean()


def test_audio_is_muxed_cut_or_padded_to_the_video(source, tmp_path):
    rate = 22050
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate * 5) / rate).astype(np.float32)  # 5 s: longer than the clip
    out = cut_clip(source, tmp_path / "talk.mp4", start=0.0, end=2.0, audio=(tone, rate))
    info = probe(out)
    assert info.has_audio and info.audio_codec == "aac"
    assert info.audio_duration_s == pytest.approx(2.0, abs=0.1)
    wave = load_audio(out)  # 16 kHz mono
    assert len(wave) == pytest.approx(32000, abs=1600) and np.abs(wave).max() > 0.3

    short = cut_clip(source, tmp_path / "short.mp4", start=0.0, end=2.0, audio=(tone[: rate // 2], rate))
    padded = load_audio(short)
    assert np.abs(padded[: 16000 // 4]).max() > 0.3 and np.abs(padded[-16000 // 2 :]).max() < 0.01  # silence after


def test_an_empty_range_is_an_error_and_leaves_no_file(source, tmp_path):
    with pytest.raises(MediaError, match="no frame between"):
        cut_clip(source, tmp_path / "none.mp4", start=100.0, end=101.0)
    assert list(tmp_path.iterdir()) == []
