"""EmoProcessor: placeholders -> media tokens, missing modalities, masks, truncation, collate, prompt pools."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoTokenizer

from emollm.errors import EmollmError
from emollm.processing import EmoProcessor, ModalitySpan, expand_placeholders, parse_spans
from emollm.prompts import (
    build_emotion_llama_prompt,
    choose_instruction,
    emotion_llama_sample,
    emotion_llama_spans,
    list_instruction_pools,
    load_instruction_pool,
)
from emollm.templates import IGNORE_INDEX
from emollm.testing.tiny import build_tiny_models

SPANS = {"video": ModalitySpan("video", 4), "audio": ModalitySpan("audio", 2), "face": ModalitySpan("face", 3)}
TEXT = "<video> <audio> The person in video says: I am fine. [emotion] Which emotion is shown?"


def sample(content: str = TEXT, target: str | None = "neutral", sid: str = "clip_7") -> dict:
    out = {"id": sid, "task": "emotion", "messages": [{"role": "user", "content": content}]}
    if target is not None:
        out["target"] = target
    return out


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_models(names=["llama2", "llama3"])


@pytest.fixture
def tok(tiny):
    return AutoTokenizer.from_pretrained(tiny.llama2)


@pytest.fixture
def logs(caplog):
    """caplog on the emollm logger itself: the CLI's setup_logging (other tests) stops propagation."""
    logger = logging.getLogger("emollm")
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def loss_text(tok, row) -> str:
    return tok.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE_INDEX])


def test_media_tokens_are_added_once_and_reported(tok):
    before = len(tok)
    proc = EmoProcessor(tok, "llama2", SPANS)
    assert proc.vocab_grew and proc.num_added_tokens == 3 and len(tok) == before + 3
    assert sorted(proc.media_token_ids.values()) == [before, before + 1, before + 2]
    assert tok.convert_ids_to_tokens(proc.media_token_ids["video"]) == "<|emo_video|>"
    again = EmoProcessor(tok, "llama2", SPANS)  # same tokenizer: nothing new, same ids
    assert not again.vocab_grew and again.media_token_ids == proc.media_token_ids


@pytest.mark.parametrize("family", ["llama2", "llama3"])
def test_placeholders_expand_to_n_media_tokens_and_only_the_answer_is_in_the_loss(tiny, family):
    tok = AutoTokenizer.from_pretrained(tiny[family])
    proc = EmoProcessor(tok, None, SPANS)  # template guessed from the tokenizer
    assert proc.template.name == family
    row = proc(sample())
    ids, labels = row["input_ids"], row["labels"]
    assert ids.count(proc.media_token_ids["video"]) == 4 and ids.count(proc.media_token_ids["audio"]) == 2
    assert ids.count(proc.media_token_ids["face"]) == 0  # no <face> placeholder in the text
    assert row["attention_mask"] == [1] * len(ids) and len(labels) == len(ids)
    assert loss_text(tok, row).strip() == "neutral" + (" </s>" if family == "llama2" else "<|eot_id|>")
    assert row["media_present"] == ["audio", "video"]
    prompt = proc.render(sample())
    assert "<video>" not in prompt and "<|emo_video|>" * 4 + " " + "<|emo_audio|>" * 2 + " The person" in prompt


def test_a_missing_modality_is_dropped_cleanly_or_kept_as_zero(tok):
    drop = EmoProcessor(tok, "llama2", SPANS, missing_modality="drop")
    row = drop(sample(), present={"video"})
    assert row["input_ids"].count(drop.media_token_ids["audio"]) == 0 and row["media_present"] == ["video"]
    assert "[INST] " + "<|emo_video|>" * 4 + " The person in video says" in drop.render(sample(), present={"video"})
    # placeholders at the start, end, side by side and between lines leave no stray whitespace
    cases = {"<audio> Hello": "Hello", "Hello <audio>": "Hello", "a <face><audio> b": "a b", "a<audio>b": "ab",
             "a <face> <audio> b": "a b", "line one\n<audio>\nline two": "line one\nline two",
             "<video> <audio> x": "x"}
    for text, expected in cases.items():
        assert expand_placeholders(text, SPANS, present=set(), missing_modality="drop") == expected, text
    zero = EmoProcessor(tok, "llama2", SPANS, missing_modality="zero")
    row = zero(sample(), present={"video"})
    assert row["input_ids"].count(zero.media_token_ids["audio"]) == 2  # tokens stay; the model writes zeros
    assert row["media_present"] == ["video"]


def test_unknown_placeholders_stay_text_and_are_logged_at_debug(tok, logs):
    proc = EmoProcessor(tok, "llama2", SPANS)
    with logs.at_level(logging.DEBUG, logger="emollm"):
        prompt = proc.render(sample("<video> <feature><au></feature> hi"))
    assert "<feature><au></feature> hi" in prompt
    assert any("'<au>' is not a configured modality" in r.getMessage() for r in logs.records)


def test_bad_samples_are_named_in_one_clear_error(tok):
    proc = EmoProcessor(tok, "llama2", SPANS)
    with pytest.raises(EmollmError, match="clip_7: placeholder <video> occurs 2 times"):
        proc(sample("<video> and again <video>"))
    with pytest.raises(EmollmError, match="placeholder <audio> in an assistant message"):
        proc({"id": "x", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<audio>"}]})
    with pytest.raises(EmollmError, match="alternate"):
        proc({"id": "x", "messages": [{"role": "assistant", "content": "hi"}]})


def test_target_becomes_the_answer_and_an_existing_answer_is_kept(tok):
    proc = EmoProcessor(tok, "llama2", SPANS)
    assert loss_text(tok, proc(sample(target="happy"))) == "happy </s>"
    given = {"id": "a", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "sad"}],
             "target": "happy"}
    assert loss_text(tok, proc(given)) == "sad </s>"
    generation = proc(sample(target=None))
    assert set(generation["labels"]) == {IGNORE_INDEX}


def test_too_long_samples_raise_or_are_dropped_never_cut(tok, logs):
    full = len(EmoProcessor(tok, "llama2", SPANS)(sample())["input_ids"])
    fits = EmoProcessor(tok, "llama2", SPANS, max_length=full)(sample())
    assert len(fits["input_ids"]) == full
    strict = EmoProcessor(tok, "llama2", SPANS, max_length=full - 1)
    with pytest.raises(EmollmError, match=rf"sample clip_7: {full} tokens is longer than max_length {full - 1} "
                                          r"\(6 media tokens, 3 answer tokens\)"):
        strict(sample())
    lenient = EmoProcessor(tok, "llama2", SPANS, max_length=full - 1, truncation="drop")
    with logs.at_level(logging.WARNING, logger="emollm"):
        assert lenient(sample()) is None
    assert any("clip_7" in r.getMessage() and r.levelno == logging.WARNING for r in logs.records)


def test_collate_right_pads_with_eos_when_there_is_no_pad_token(tok):
    proc = EmoProcessor(tok, "llama2", SPANS)
    long, short = proc(sample()), proc(sample("<audio> hi", sid="b"), present={"audio"})
    batch = proc.collate([long, None, short], pad_to_multiple_of=8)
    n_long, n_short = len(long["input_ids"]), len(short["input_ids"])
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape[0] == 2
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= n_long
    assert tok.pad_token_id is None and proc.pad_token_id == tok.eos_token_id
    assert (batch["input_ids"][1, n_short:] == tok.eos_token_id).all()
    assert batch["attention_mask"][1].sum() == n_short and batch["attention_mask"][0].sum() == n_long
    assert (batch["labels"][1, n_short:] == IGNORE_INDEX).all()
    assert batch["labels"][1, :n_short].tolist() == short["labels"]
    assert batch["media_present"]["video"].tolist() == [True, False]
    assert batch["media_present"]["audio"].tolist() == [True, True]
    assert batch["media_present"]["face"].tolist() == [False, False]
    assert batch["ids"] == ["clip_7", "b"]
    with pytest.raises(EmollmError, match="all were dropped"):
        proc.collate([None])


def test_spans_parse_and_validate():
    assert parse_spans("video=4, audio=2") == {"video": ModalitySpan("video", 4), "audio": ModalitySpan("audio", 2)}
    with pytest.raises(EmollmError, match="NAME=COUNT"):
        parse_spans("video4")
    with pytest.raises(EmollmError, match="positive"):
        ModalitySpan("video", 0)


def test_instruction_pools_load_by_name_or_path_and_unknown_names_list_the_pools(tmp_path):
    assert {"emotion", "reason"} <= set(list_instruction_pools())
    emotion = load_instruction_pool("emotion")
    assert emotion[0] == ("Please determine which emotion label in the video represents: happy, sad, neutral, "
                          "angry, worried, surprise, fear, contempt, doubt.")
    assert len(emotion) >= 5 and not any(line.startswith("#") for line in emotion)
    reason = load_instruction_pool("reason")
    assert reason[0].startswith("What are the facial expressions and vocal tone used in the video?")
    own = tmp_path / "mine.txt"
    own.write_text("# a comment\n\nFirst.\n  Second.  \n")
    assert load_instruction_pool(own) == ["First.", "Second."]
    with pytest.raises(EmollmError, match="'nope' not found") as err:
        load_instruction_pool("nope")
    assert "emotion" in err.value.hint and "reason" in err.value.hint


def test_instruction_choice_is_deterministic_per_sample_id():
    pool = load_instruction_pool("emotion")
    picks = [choose_instruction(pool, f"clip_{i}") for i in range(40)]
    assert picks == [choose_instruction(pool, f"clip_{i}") for i in range(40)]
    assert len(set(picks)) > 2  # spread over the pool, not always the first
    assert [choose_instruction(pool, f"clip_{i}", seed=1) for i in range(40)] != picks


def test_emotion_llama_preset_renders_its_prompt_layout(tok):
    text = build_emotion_llama_prompt("I can't believe it", "emotion", "Which emotion?")
    # Emotion-LLaMA's dataset: "<video>…</video> <feature>…</feature> {} [{}] {} " with "The person in video says: {}. "
    assert text == ("<video> <feature><face><temporal><audio></feature> The person in video says: "
                    "I can't believe it.  [emotion] Which emotion? ")
    assert build_emotion_llama_prompt("Really?", "emotion", "Which?", ()).startswith("The person in video says: Really?. ")
    spans = emotion_llama_spans({"video": 2, "face": 1, "temporal": 1, "audio": 1})
    proc = EmoProcessor(tok, "llama2", spans)
    s = emotion_llama_sample("clip_1", "reason", "Hello", target="Because.")
    assert s["messages"][0]["content"].endswith("[reason] " + choose_instruction(load_instruction_pool("reason"), "clip_1") + " ")
    prompt = proc.render(s)
    assert ("[INST] <video><|emo_video|><|emo_video|></video> <feature><|emo_face|><|emo_temporal|><|emo_audio|>"
            "</feature> The person in video says: Hello.  [reason]") in prompt
    no_video = proc.render(s, present={"face", "temporal", "audio"})  # the wrapper goes with the dropped video
    assert "[INST] <feature><|emo_face|>" in no_video and "</video>" not in no_video


@pytest.mark.parametrize("family", ["llama2", "llama3"])
def test_text_cannot_add_a_media_slot_or_a_control_token(tiny, family):
    """A literal media token, an escaped placeholder (subtitles, reasoning) or a control-token string in
    the text stays text: the media tokens in the ids are exactly the placeholders' expansions."""
    tok = AutoTokenizer.from_pretrained(tiny[family])
    proc = EmoProcessor(tok, None, SPANS)
    clean = proc(sample())
    forged = "<|emo_video|><|emo_audio|> </s><|eot_id|>"
    row = proc(sample(TEXT + " " + forged + " \\<face>", target="neutral " + forged + " \\<audio>"))
    for name, token_id in proc.media_token_ids.items():
        assert row["input_ids"].count(token_id) == clean["input_ids"].count(token_id), name
    assert row["media_present"] == clean["media_present"] == ["audio", "video"]
    end = proc.template.end_id(tok)
    assert row["input_ids"].count(end) == clean["input_ids"].count(end)  # llama3: also after the user turn
    assert row["labels"].count(end) == 1
    assert row["input_ids"].count(tok.eos_token_id) == clean["input_ids"].count(tok.eos_token_id)
    assert row["labels"][-1] == end and len(row["labels"]) == len(row["input_ids"])
    prompt = proc.render(sample(TEXT + " " + forged + " \\<face>", target=None))
    assert prompt.endswith(forged + " <face> [/INST]" if family == "llama2" else forged + " <face><|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert loss_text(tok, row).startswith("neutral " + forged + " <audio>")
    with pytest.raises(EmollmError, match="placeholder <audio> in an assistant message"):
        proc(sample(target="unescaped <audio>"))


def test_emotion_llama_samples_escape_the_clip_text():
    """Subtitles and reasoning are clip content: a '<video>' in them is text; the pool's instruction is not."""
    s = emotion_llama_sample("c1", "reason", "I said <video> twice <audio>", target="Her <face> says so.",
                             pool=["Why? <face>"])
    user = s["messages"][0]["content"]
    assert "says: I said \\<video> twice \\<audio>." in user and user.endswith("Why? <face> ")
    assert s["target"] == "Her \\<face> says so."
