"""The labelled real clips the demo trains and evaluates on, and the speech put on them."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from emollm.media import probe
from emollm.testing.labelled_clips import LABELLED_SEGMENTS, UNLABELLED_SAMPLES, make_labelled_clips
from emollm.testing.speech import can_speak, speak

needs_espeak = pytest.mark.skipif(not can_speak(), reason="espeak-ng is not installed (apt-get install espeak-ng)")


def test_segments_of_one_video_never_overlap_across_the_split():
    by_source: dict[str, list] = {}
    for seg in LABELLED_SEGMENTS.values():
        by_source.setdefault(seg.source, []).append(seg)
    for segs in by_source.values():
        spans = sorted((s.start, s.end if s.end is not None else float("inf")) for s in segs)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    splits = {s.split for s in LABELLED_SEGMENTS.values()}
    assert splits == {"train", "test"}
    for split in splits:  # both splits hold every label
        assert {s.label for s in LABELLED_SEGMENTS.values() if s.split == split} == {"happy", "sad"}


def test_without_speech_the_clips_are_silent_segments_with_a_labels_csv(tmp_path):
    made = make_labelled_clips(tmp_path, speech=False, unlabelled=True)
    rows = list(csv.DictReader(made.labels_csv.open()))
    assert [r["id"] for r in rows] == list(LABELLED_SEGMENTS)
    assert {r["id"]: (r["label"], r["split"]) for r in rows} == {k: (s.label, s.split) for k, s in LABELLED_SEGMENTS.items()}
    names = sorted(p.name for p in made.clips_dir.iterdir())
    assert names == sorted([f"{k}.mp4" for k in LABELLED_SEGMENTS] + list(UNLABELLED_SAMPLES))
    info = probe(made.clips_dir / "wl_sad_2.mp4")
    assert info.duration_s == pytest.approx(2.0, abs=0.1) and not info.has_audio
    assert made.spoken == {} and made.speech_note is None


@needs_espeak
def test_speech_is_put_on_the_segments_that_have_a_sentence(tmp_path):
    made = make_labelled_clips(tmp_path)
    assert made.spoken == {k: s.speech for k, s in LABELLED_SEGMENTS.items() if s.speech}
    for clip_id, seg in LABELLED_SEGMENTS.items():
        assert probe(made.clips_dir / f"{clip_id}.mp4").has_audio == bool(seg.speech), clip_id


@needs_espeak
def test_speak_gives_mono_speech_of_a_plausible_length():
    wave, rate = speak("I feel so sad today.")
    assert wave.ndim == 1 and wave.dtype == np.float32 and rate > 8000
    assert 0.8 < len(wave) / rate < 4.0 and 0.05 < np.abs(wave).max() <= 1.0
