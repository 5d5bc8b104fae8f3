"""The live encoders at inference: `explain_many` runs each over the clips together (the answers are the
ones each clip gets alone; an encoder failing on one clip fails that clip only), and `predict` fills a
missing feature cache with the model's own encoders, loaded once, not rebuilt on every call."""

from __future__ import annotations

import json
import shutil

import pytest

import emollm
from emollm.errors import EmollmError


@pytest.fixture(scope="module")
def explainer(trained_run):
    run, _ = trained_run
    return emollm.load(run, device="cpu")


def _spy_encoders(explainer, monkeypatch, fail=None):
    """Count each live encoder's batched calls and the clips they carry; ``fail(name, x)``: raise there."""
    calls: dict[str, list[int]] = {}
    live = explainer.model.load_encoders()
    for name, encoder in live.items():
        real = encoder.extract_batch

        def extract_batch(items, batch_size=8, name=name, real=real):
            calls.setdefault(name, []).append(len(items))
            if fail is not None and any(fail(name, x) for x in items):
                raise EmollmError(f"encoder {name}: cannot read this input")
            return real(items, batch_size=batch_size)

        monkeypatch.setattr(encoder, "extract_batch", extract_batch)
    return calls


def test_explain_many_encodes_the_clips_together_and_answers_as_each_alone(explainer, sample_dir, tmp_path,
                                                                           monkeypatch):
    alone = [explainer.explain(sample_dir / name, task="emotion", max_new_tokens=4)
             for name in ("single_face.mp4", "no_face.mp4")]  # fmt: skip
    clips = [shutil.copy(sample_dir / "single_face.mp4", tmp_path / f"a{i}.mp4") for i in range(3)]
    calls = _spy_encoders(explainer, monkeypatch)
    together = explainer.explain_many(clips, task="emotion", max_new_tokens=4)
    assert all(r.ok for r in together)
    trained = {n for n, s in explainer.model.config.modalities.items() if s["kind"] != "au"}
    # one call per encoder over the three clips (same frame size), not one per clip
    assert {n: c for n, c in calls.items()} == dict.fromkeys(trained, [3])
    assert {r.text for r in together} == {alone[0].text}
    # the same clip under another name: the same prompt, features and cues (phrase wording is drawn per id)
    same = ("modalities_fed", "modalities_absent", "peak_frame", "prompt", "pseudo_label", "aus_present_at_peak")
    assert all({k: r.cues[k] for k in same} == {k: alone[0].cues[k] for k in same} for r in together)

    monkeypatch.undo()
    mixed = explainer.explain_many([sample_dir / "single_face.mp4", sample_dir / "no_face.mp4"], task="emotion",
                                   max_new_tokens=4)  # fmt: skip
    assert [r.text for r in mixed] == [r.text for r in alone]
    assert [r.cues for r in mixed] == [r.cues for r in alone]


def test_an_encoder_failing_on_one_clip_fails_that_clip_only(explainer, sample_dir, monkeypatch):
    # the audio encoder refuses the longer clip's audio (16 kHz); the 2.4 s clip's it reads
    calls = _spy_encoders(explainer, monkeypatch, fail=lambda name, x: name == "audio" and len(x) > 16000 * 2.5)
    good, bad = explainer.explain_many([sample_dir / "single_face.mp4", sample_dir / "face_noface.mov"],
                                       task="emotion", max_new_tokens=4)  # fmt: skip
    assert calls["audio"][0] == 2  # tried together first
    assert good.ok and good.label == "happy" and "audio" in good.cues["modalities_fed"]
    assert not bad.ok and "encoder audio: cannot read this input" in bad.error


def test_predict_fills_a_missing_cache_with_the_models_encoders_loaded_once(trained_run, tiny_dataset, tmp_path,
                                                                            call_counter):
    import emollm.modeling.encoders as encoders
    from emollm.inference import load_model, predict_dataset, run_config

    run, labels = trained_run
    dataset, _ = tiny_dataset
    shutil.copytree(dataset.parent / "clips", tmp_path / "clips")  # media paths are relative to the dataset
    cfg = run_config(run)
    model, processor = load_model(run, device="cpu")
    call_counter(encoders, "build_encoder", "built")
    frozen = [n for n, s in model.config.modalities.items() if s["kind"] != "au"]
    for k in range(2):  # two datasets without a feature cache, one model
        copy = tmp_path / f"dataset{k}"
        shutil.copytree(dataset, copy)
        shutil.rmtree(copy / "features")
        summary = predict_dataset(cfg, model, processor, copy, tmp_path / f"p{k}.jsonl", task="emotion")
        assert summary.features_computed > 0 and summary.written == 2
        assert {r["text"] for r in map(json.loads, (tmp_path / f"p{k}.jsonl").read_text().splitlines())} == set(labels.values())
        assert call_counter.calls["built"] == len(frozen)  # built for the first dataset, reused for the second
