"""`emollm infer` and the Python API: raw clips in, label + reasoning + cues out."""

from __future__ import annotations

import json

import pytest
import torch

import emollm
from emollm.cli import main as cli
from emollm.errors import EmollmError


@pytest.fixture(scope="module")
def explainer(trained_run):
    run, _ = trained_run
    return emollm.load(run, device="cpu")


def test_python_api_explains_a_clip_feeding_every_trained_modality(explainer, sample_dir, monkeypatch):
    seen = {}
    embed = explainer.model.embed

    def spy(input_ids, media=None, media_present=None, media_masks=None):
        if media is not None:  # the prefill; decode steps see new tokens only
            seen.update(media=media, present=media_present)
        return embed(input_ids, media, media_present, media_masks)

    monkeypatch.setattr(explainer.model, "embed", spy)
    result = explainer.explain(sample_dir / "single_face.mp4", task="emotion")
    assert result.ok and result.label == "happy" and result.reasoning == result.text == "happy"
    trained = set(explainer.model.config.modalities)
    assert set(result.cues["modalities_fed"]) == trained and not result.cues["modalities_absent"]
    # no zero stand-ins: every modality's features in the merged batch are real (non-zero) and marked present
    assert set(seen["media"]) == trained
    for name, features in seen["media"].items():
        assert bool(seen["present"][name].all()), name
        assert features.abs().sum() > 0, name
    assert result.cues["pseudo_label"] == "happy" and result.cues["aus_present_at_peak"]
    assert result.cues["peak_frame"] is not None and "<|emo_" in result.cues["prompt"]
    assert set(result.timings_s) == {"analyse", "encoders", "generate"}


def test_a_clip_is_decoded_and_its_face_tracked_once(explainer, sample_dir, call_counter):
    """infer reuses the builder's analysis for the encoders: one frame decode, one audio decode, one track."""
    import emollm.media as media
    import emollm.media.audio as audio
    import emollm.media.faces as faces
    import emollm.media.video as video

    for module, name, key in ((media, "read_frames_from", "frames"), (video, "read_frames", "frames"),
                              (video, "read_frames_from", "frames"), (audio, "load_audio_from", "audio"), (media, "track_faces", "track"),
                              (faces, "track_faces", "track")):  # fmt: skip
        call_counter(module, name, key)
    calls = call_counter.calls
    result = explainer.explain(sample_dir / "single_face.mp4", task="emotion")
    assert result.ok and set(result.cues["modalities_fed"]) == set(explainer.model.config.modalities)
    assert calls == {"frames": 1, "audio": 1, "track": 1}


def test_cli_batch_with_a_bad_clip_still_returns_the_others(trained_run, sample_dir, broken, capsys):
    run, _ = trained_run
    clips = [sample_dir / "single_face.mp4", broken["random"], sample_dir / "no_face.mp4"]
    code = cli.main(["--quiet", "infer", "--model", str(run), *map(str, clips), "--task", "emotion", "--json",
                     "--max-new-tokens", "4"])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 2 and len(out) == 3
    good, bad, no_face = out
    assert good["error"] is None and good["label"] == "happy"
    assert bad["error"] and bad["text"] == "" and bad["clip"] == str(broken["random"])
    assert "emollm-infer-" not in bad["error"], bad["error"]  # never a scratch copy
    assert no_face["error"] is None and set(no_face["cues"]["modalities_absent"]) == {"face", "temporal", "au"}
    assert "face" not in no_face["cues"]["modalities_fed"] and "audio" in no_face["cues"]["modalities_fed"]


def test_errors_name_the_users_files_not_the_scratch_folder(trained_run, tmp_path, capsys):
    run, _ = trained_run
    notes = tmp_path / "notes.txt"
    notes.write_text("not a clip")
    code = cli.main(["--quiet", "infer", "--model", str(run), str(notes), "--task", "emotion", "--json"])
    captured = capsys.readouterr()
    shown = captured.out + captured.err
    assert code == 2 and "bug" not in shown, shown
    assert "emollm-infer-" not in shown, shown  # the temp folder is gone by the time the user reads this
    assert "notes.txt" in shown


def test_cli_prints_label_and_answer_and_takes_a_subtitle(trained_run, sample_dir, capsys):
    run, _ = trained_run
    code = cli.main(["--quiet", "infer", "--model", str(run), str(sample_dir / "single_face.mp4"),
                     "--subtitle", "I did not expect this at all", "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "label:" in out and "answer:" in out
    assert "subtitle: I did not expect this at all" in out


def test_a_modality_the_model_lacks_is_one_clear_error(trained_run, explainer, sample_dir, capsys):
    run, _ = trained_run
    with pytest.raises(EmollmError, match="trained without modality 'text'"):
        explainer.explain(sample_dir / "single_face.mp4", modalities=["audio", "text"])
    code = cli.main(["infer", "--model", str(run), str(sample_dir / "single_face.mp4"), "--modalities", "thermal"])
    err = capsys.readouterr().err
    assert code == 2 and "trained without modality 'thermal'" in err and "Traceback" not in err


def test_feeding_a_subset_of_modalities(explainer, sample_dir, monkeypatch):
    seen = {}
    embed = explainer.model.embed

    def spy(input_ids, media=None, media_present=None, media_masks=None):
        if media is not None:
            seen.update(media={k: v.clone() for k, v in media.items()}, present=media_present)
        return embed(input_ids, media, media_present, media_masks)

    monkeypatch.setattr(explainer.model, "embed", spy)
    result = explainer.explain(sample_dir / "single_face.mp4", task="emotion", modalities=["audio", "au"],
                               max_new_tokens=4)
    assert result.cues["modalities_fed"] == ["au", "audio"]
    left_out = set(explainer.model.config.modalities) - {"audio", "au"}
    assert left_out  # the run has more modalities than the two fed
    # the tiny run's policy is "zero": the spans stay in the prompt, marked absent, with zeros as features
    assert explainer.processor.missing_modality == "zero"
    for name in left_out:
        assert f"<|emo_{name}|>" in result.cues["prompt"], name
        assert not bool(seen["present"][name].any()) and not bool(seen["media"][name].any()), name
    assert all(bool(seen["present"][name].all()) and bool(seen["media"][name].any()) for name in ("audio", "au"))


def test_infer_with_beam_search_and_seeded_sampling(trained_run, explainer, sample_dir, capsys, expand_sizes):
    sizes = expand_sizes
    run, _ = trained_run
    clip = str(sample_dir / "single_face.mp4")
    code = cli.main(["--quiet", "infer", "--model", str(run), clip, "--task", "emotion", "--json", "--num-beams", "2",
                     "--max-new-tokens", "4"])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0 and sizes == [2]  # beam search, the clip's media expanded for both beams
    assert row["error"] is None and row["label"] == "happy" and row["text"] == "happy"
    # the Python API takes the same options; sampling is reproducible under a seed
    answers = []
    for seed in (5, 5):
        torch.manual_seed(seed)
        answers.append(explainer.explain(clip, task="emotion", temperature=50.0, max_new_tokens=4).text)
    assert answers[0] == answers[1] and answers[0] != "happy"  # sampled (flat at this temperature), repeatable


class _ScriptedWhisper:
    """Stands for a whisper model (registered by name): the clip's speech, as whisper returns it."""

    def transcribe(self, audio, **kw):  # noqa: ANN001, ANN003, ANN201
        assert audio.ndim == 1 and len(audio) > 16000  # the clip's real 16 kHz audio
        return {"language": "en", "segments": [{"text": " I can't believe it.", "no_speech_prob": 0.05,
                                                "compression_ratio": 1.1}]}


def test_whisper_gives_the_subtitle_when_none_is_given(trained_run, sample_dir, capsys):
    from data_builders.subtitles import register_model

    register_model("scripted-whisper-infer", _ScriptedWhisper())
    run, _ = trained_run
    asr = ["build.asr=whisper", "build.whisper_model=scripted-whisper-infer", "build.silence_dbfs=-80"]
    result = emollm.load(run, device="cpu", overrides=asr).explain(sample_dir / "single_face.mp4", max_new_tokens=2)
    assert result.cues["subtitle"] == "I can't believe it." and result.cues["subtitle_source"] == "whisper"
    assert "The person in video says: I can't believe it." in result.cues["prompt"]
    # a given subtitle wins over whisper; CLI overrides reach the run's config
    code = cli.main(["--quiet", "infer", "--model", str(run), str(sample_dir / "single_face.mp4"), *asr,
                     "--subtitle", "Hello there", "--json", "--max-new-tokens", "2"])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0 and row["cues"]["subtitle"] == "Hello there" and row["cues"]["subtitle_source"].startswith("csv:")


def test_the_same_clip_under_two_names_gets_the_same_prompt_and_answer(explainer, sample_dir, tmp_path):
    """The instruction comes from the config (predict.instruction), not from a hash of the file name."""
    import shutil

    from emollm.prompts import choose_instruction, load_instruction_pool

    pool = load_instruction_pool("emotion")
    names = ("my_clip", "clip_copy")
    # under a name hash these two would be asked different instructions: the test would fail
    assert choose_instruction(pool, names[0], explainer.cfg.run.seed) != choose_instruction(pool, names[1],
                                                                                           explainer.cfg.run.seed)
    clips = [shutil.copy(sample_dir / "single_face.mp4", tmp_path / f"{n}.mp4") for n in names]
    first, second = explainer.explain_many(clips, task="emotion", max_new_tokens=4)
    assert first.ok and second.ok
    assert first.cues["prompt"] == second.cues["prompt"] and pool[0] in first.cues["prompt"]
    assert first.text == second.text

    explainer.cfg.predict.instruction = 1
    try:
        (third,) = explainer.explain_many(clips[:1], task="emotion", max_new_tokens=4)
        assert pool[1] in third.cues["prompt"] and pool[0] not in third.cues["prompt"]
        explainer.cfg.predict.instruction = len(pool)
        with pytest.raises(EmollmError, match=f"predict.instruction={len(pool)}.*holds {len(pool)} entries"):
            explainer.explain_many(clips[:1], task="emotion")
    finally:
        explainer.cfg.predict.instruction = 0


def test_infer_analyses_in_memory_never_through_the_builders_runner(explainer, sample_dir, tmp_path, monkeypatch):
    """No scratch dataset: the runner's build is never called and no AU file is written, unless
    ``workdir`` asks for a dump of the analysis (records + AU series, as they were used)."""
    import ast
    import inspect

    import data_builders.au as au
    import data_builders.runner as runner
    import emollm.inference as inference
    from data_builders.au import load_aus

    imported = [n.module if isinstance(n, ast.ImportFrom) else a.name for n in ast.walk(ast.parse(inspect.getsource(inference)))
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]  # fmt: skip
    assert not [m for m in imported if m and m.startswith("data_builders.runner")], imported

    def refuse(*a, **k):
        raise AssertionError("infer wrote or built a dataset")

    monkeypatch.setattr(runner, "build", refuse)
    monkeypatch.setattr(au, "save_aus", refuse)
    first = explainer.explain(sample_dir / "single_face.mp4", task="emotion", max_new_tokens=2)
    assert first.ok and first.cues["peak_frame"] is not None
    monkeypatch.undo()
    (again,) = explainer.explain_many([sample_dir / "single_face.mp4"], task="emotion", max_new_tokens=2,
                                      workdir=tmp_path / "dump")
    assert again.cues == first.cues and again.text == first.text
    (rec,) = [json.loads(line) for line in (tmp_path / "dump" / "annotations.jsonl").read_text().splitlines()]
    assert rec["id"] == "single_face" and rec["peak_frame"]["index"] == first.cues["peak_frame"]
    assert rec["aus_present_at_peak"] == first.cues["aus_present_at_peak"]
    assert load_aus(tmp_path / "dump" / rec["aus_file"]).num_frames == rec["frames_analysed"] > 0
