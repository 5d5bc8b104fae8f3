"""Builder cues: AU phrases, prosody tone, whisper subtitles (tiny model built here), wiring + resume."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_builders.phrases import choose_phrase, describe_expression, load_phrases
from data_builders.runner import build
from data_builders.subtitles import is_silent, load_whisper, transcribe
from data_builders.tone import describe_prosody, prosody_features, yin_f0
from emollm import config
from emollm.errors import CueError
from emollm.media import load_audio

SR = 16000


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    import torch
    import whisper

    torch.manual_seed(0)
    dims = whisper.model.ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2,
                                         n_audio_layer=1, n_vocab=51865, n_text_ctx=448, n_text_state=64,
                                         n_text_head=2, n_text_layer=1)
    path = tmp_path_factory.mktemp("whisper") / "tiny-random.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": whisper.model.Whisper(dims).state_dict()}, path)
    return path


def _voice(seconds: float, f_start: float, f_end: float, amp: float) -> np.ndarray:
    """A buzzy voiced sound with a gliding pitch and syllable-like amplitude bursts (4/s)."""
    t = np.arange(int(seconds * SR)) / SR
    f = f_start * (f_end / f_start) ** (t / seconds)
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (amp * x * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)) / 2.3).astype(np.float32)


# ------------------------------------------------------------------------------------------ phrases


def test_au_phrases_are_data_seeded_and_reproducible(tmp_path) -> None:
    table = load_phrases()
    assert "eyes widened" in table.phrases["AU05"] and "upper lid raiser" in table.phrases["AU05"]
    assert "jaw drop" in table.phrases["AU26"] and "wide-mouthed" in table.phrases["AU26"]
    assert all(len(v) >= 2 for v in table.phrases.values())
    chosen = {choose_phrase(table, "AU26", f"clip{i}") for i in range(40)}
    assert len(chosen) >= 2  # several phrasings used across clips
    a = describe_expression(["AU26", "AU05"], {"AU05": 2.0, "AU26": 3.5}, table, "clip7")
    assert a == describe_expression(["AU26", "AU05"], {"AU05": 2.0, "AU26": 3.5}, table, "clip7")
    assert a.split(", ")[0] in table.phrases["AU26"]  # strongest first
    assert describe_expression([], None, table, "x") is None
    assert len(describe_expression(["AU01", "AU02", "AU04", "AU05"], None, table, "x", max_aus=2).split(", ")) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("phrases:\n  AU99: [nope]\n", encoding="utf-8")
    with pytest.raises(CueError, match="AU99"):
        load_phrases(bad)


# ------------------------------------------------------------------------------------------ tone


def test_yin_tracks_a_known_pitch() -> None:
    t = np.arange(SR) / SR
    frames = np.stack([np.sin(2 * np.pi * 180 * t[i : i + 800]) for i in range(0, 8000, 800)])
    f0, ap = yin_f0(frames)
    assert np.allclose(f0, 180, atol=2) and (ap < 0.1).all()


def test_yin_in_blocks_gives_the_values_of_one_pass() -> None:
    """A long clip is tracked block by block (bounded memory): every frame's F0 is the one-pass value, bit for bit."""
    from data_builders import tone

    voice = _voice(12.0, 120, 300, 0.5)  # ~1200 frames: several blocks and a partial last one
    frames = tone._frames(voice.astype(np.float64))
    assert len(frames) > 3 * tone.YIN_BLOCK and len(frames) % tone.YIN_BLOCK
    f0, ap = yin_f0(frames)
    one_f0, one_ap = tone._yin_block(frames, SR, tone.FMIN, tone.FMAX, 0.15)
    assert np.array_equal(f0, one_f0) and np.array_equal(ap, one_ap)


def test_prosody_phrases_silence_and_rising_pitch() -> None:
    silent = describe_prosody(np.zeros(SR * 2, np.float32))
    assert silent.tone is None and silent.flags == ["silent_audio"]
    rising = describe_prosody(_voice(2.5, 140, 260, 0.8))
    assert rising.tone and "rising" in rising.tone and "loudly" in rising.tone
    falling_soft = describe_prosody(_voice(2.5, 240, 130, 0.02))
    assert "falling" in falling_soft.tone and "softly" in falling_soft.tone
    p = prosody_features(_voice(2.5, 140, 260, 0.8))
    assert 140 < p.pitch_hz < 260 and p.pitch_slope_st_s > 3 and p.syllable_rate > 2


def test_prosody_on_real_speech_and_silent_track(sample_dir) -> None:
    speech = describe_prosody(load_audio(sample_dir / "no_face.mp4"))
    assert speech.tone and speech.tone.startswith("speaks") and speech.prosody.voiced_s > 0.3
    silent = describe_prosody(load_audio(sample_dir / "WolfgangLanger_Pexels.mp4"))
    assert silent.tone is None and "silent_audio" in silent.flags


# ------------------------------------------------------------------------------------------ whisper


def test_whisper_by_path_on_numpy_and_offline_errors(tiny_whisper, sample_dir) -> None:
    audio = load_audio(sample_dir / "no_face.mp4")
    tr = transcribe(audio, str(tiny_whisper), language="en")
    assert tr.language == "en" and (tr.text is None or isinstance(tr.text, str))
    assert load_whisper(str(tiny_whisper)) is load_whisper(str(tiny_whisper))  # cached per process
    assert is_silent(np.zeros(SR, np.float32), -55) and not is_silent(audio, -55)
    with pytest.raises(CueError, match="neither a file nor"):
        load_whisper("no-such-model")


# ------------------------------------------------------------------------------------------ build


def test_build_with_cues_then_resume_rules(sample_dir, tiny_whisper, tmp_path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("no_face.mp4", "WolfgangLanger_Pexels.mp4", "single_face.mp4"):
        shutil.copy(sample_dir / name, clips / name)
    subs = tmp_path / "subs.csv"
    subs.write_text("id,subtitle\nsingle_face,I am so glad to see you!\n", encoding="utf-8")
    over = ["build.au_fps=2", "build.asr=whisper", f"build.whisper_model={tiny_whisper}", "build.whisper_language=en",
            f"data.subtitles_csv={subs}"]  # fmt: skip
    out = tmp_path / "ds"
    s1 = build(config.load(None, over), clips, out)
    assert s1.computed == 3 and s1.failed == 0
    recs = {json.loads(line)["id"]: json.loads(line) for line in (out / "annotations.jsonl").open(encoding="utf-8")}
    silent = recs["WolfgangLanger_Pexels"]
    assert "silent_audio" in silent["flags"] and silent["tone"] is None and silent["subtitle"] is None
    assert "tone" not in silent["provenance"] and "tone" not in (silent["coarse_description"] or "")
    speech = recs["no_face"]
    assert speech["tone"] and speech["prosody"]["voiced_s"] > 0
    assert speech["provenance"]["tone"]["source"] == "prosody"
    assert speech["pseudo_label"] is None and speech["expression"] is None  # no face: no expression, no label
    assert "expression" not in (speech["coarse_description"] or "")
    if speech["subtitle"]:
        assert speech["provenance"]["subtitle"]["source"] == "whisper"
    csv_clip = recs["single_face"]
    assert csv_clip["subtitle"] == "I am so glad to see you!"
    assert csv_clip["provenance"]["subtitle"]["source"] == "csv:subs.csv"
    assert csv_clip["expression"] and csv_clip["provenance"]["expression"]["source"].startswith("au_phrases:")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["text"]["coarse_descriptions"] >= 2

    aus_mtime = (out / "aus" / "single_face.npz").stat().st_mtime_ns
    # writer / description settings live at merge time: nothing recomputed
    s2 = build(config.load(None, [*over, "build.writer.backend=none", "build.expression_max_aus=2"]), clips, out)
    assert s2.reused == 3 and s2.computed == 0 and s2.relabelled == 0
    assert all(json.loads(line)["reasoning"] is None for line in (out / "annotations.jsonl").open(encoding="utf-8"))
    # a changed cue setting redoes the audio cues only; AUs are read back from the side files
    s3 = build(config.load(None, [*over, "build.tone=none"]), clips, out)
    assert s3.relabelled == 3 and s3.computed == 0
    assert (out / "aus" / "single_face.npz").stat().st_mtime_ns == aus_mtime
    recs = [json.loads(line) for line in (out / "annotations.jsonl").open(encoding="utf-8")]
    assert all(r["tone"] is None for r in recs)


def test_whisper_with_two_workers_does_not_hang(sample_dir, tiny_whisper, tmp_path) -> None:
    # this process already ran torch (the tiny whisper): forked workers would hang, so whisper uses spawn
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("no_face.mp4", "single_face.mp4"):
        shutil.copy(sample_dir / name, clips / name)
    over = ["build.au_fps=1", "build.asr=whisper", f"build.whisper_model={tiny_whisper}", "build.whisper_language=en"]
    s = build(config.load(None, over), clips, tmp_path / "ds", workers=2)
    assert s.computed == 2 and s.failed == 0 and s.records == 2


class _StubWhisper:
    """Scripted whisper: one real segment, one no-speech segment, one repetition loop."""

    def transcribe(self, audio, **kw):  # noqa: ANN001, ANN003, ANN201
        assert audio.dtype == np.float32 and audio.ndim == 1 and kw["temperature"] == 0.0
        return {"language": "en", "segments": [
            {"text": " I can't believe it.", "no_speech_prob": 0.05, "compression_ratio": 1.1},
            {"text": " (noise)", "no_speech_prob": 0.95, "compression_ratio": 1.0},
            {"text": " la la la la la la la la", "no_speech_prob": 0.1, "compression_ratio": 4.0}]}


def test_whisper_subtitle_reaches_record_and_description(sample_dir, tmp_path) -> None:
    from data_builders.subtitles import register_model

    register_model("stub-whisper", _StubWhisper())
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "single_face.mp4", clips / "a.mp4")
    build(config.load(None, ["build.au_fps=1", "build.asr=whisper", "build.whisper_model=stub-whisper",
                             "build.silence_dbfs=-80"]), clips, tmp_path / "ds")  # fmt: skip
    rec = json.loads((tmp_path / "ds" / "annotations.jsonl").read_text(encoding="utf-8"))
    assert rec["subtitle"] == "I can't believe it." and rec["subtitle_language"] == "en"
    assert rec["provenance"]["subtitle"]["source"] == "whisper" and "asr_repetition_dropped" in rec["flags"]
    assert rec["coarse_description"].endswith('saying: "I can\'t believe it".')
    assert "I can't believe it" in rec["reasoning"]


def test_a_clips_voicing_is_tracked_once(monkeypatch) -> None:
    """The analysis' voiced frames and the prosody tone of one clip's audio share one F0 track (same
    answer as tracking it again); other audio is tracked afresh."""
    from data_builders import tone

    t = np.arange(16000 * 2) / 16000
    x = (0.3 * np.sin(2 * np.pi * 160 * t) * (t % 1.0 < 0.3)).astype(np.float32)  # voiced bursts
    calls: list[int] = []
    real = tone.yin_f0
    monkeypatch.setattr(tone, "yin_f0", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(tone, "_LAST_VOICING", (None, None))
    voiced = tone.voiced_at(x, np.array([0.1, 0.65, 1.1]))
    first = prosody_features(x)
    assert len(calls) == 1 and voiced.tolist() == [True, False, True] and first.voiced_s > 0.3
    monkeypatch.setattr(tone, "_LAST_VOICING", (None, None))
    assert prosody_features(x) == first and len(calls) == 2  # the kept answer is the computed one
    quieter = prosody_features(0.5 * x)
    assert len(calls) == 3 and quieter.peak_dbfs < first.peak_dbfs
