"""Emotion-LLaMA's prompt, token for token: the ``emotion_llama`` template and the preset's spans give the
ids MiniGPT-v2's own training code builds (``prompt_wrap`` + ``tokenize`` of the answer), written here
from its algorithm: BOS, then ``[INST] {instruction} [/INST]`` split at ``<VideoHere>`` / ``<FeatureHere>``
with each text segment tokenized alone, 256 image embeddings, 4 feature embeddings (face, video, audio,
EVA CLS), then ``answer + "</s>"`` tokenized alone and trained on."""

# ruff: noqa: UP032  (MiniGPT-v2's own str.format calls, written as it writes them)
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from emollm.errors import EmollmError
from emollm.processing import EmoProcessor, ModalitySpan
from emollm.prompts import emotion_llama_sample
from emollm.templates import IGNORE_INDEX
from emollm.testing.tiny import build_tiny_models

MODALITIES = ("video", "face", "temporal", "audio", "video_cls")
SPANS = [ModalitySpan("video", 257, "<video>", "</video>", tail="video_cls", tail_tokens=1),
         ModalitySpan("face", 1), ModalitySpan("temporal", 1), ModalitySpan("audio", 1)]
IMAGE, FEATURE = -1, -2  # positions of embeddings in the reference


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(build_tiny_models(names=["llama2"]).llama2)


def minigpt_v2_ids(tok, sentence: str, task: str, instruction: str, answer: str | None):
    """What MiniGPT-v2 (Emotion-LLaMA's ``first_face.py`` + ``minigpt_base.py``) feeds the LLM in training."""
    character_line = "The person in video says: {}. ".format(sentence)
    text = "<video><VideoHere></video> <feature><FeatureHere></feature> {} [{}] {} ".format(
        character_line, task, instruction)
    prompt = "[INST] {} [/INST]".format(text)  # chat_template: True
    video_segs = prompt.split("<VideoHere>")
    feature_segs = video_segs[-1].split("<FeatureHere>")

    def seg(s):
        return tok(s, add_special_tokens=False).input_ids

    ids = [tok.bos_token_id] + seg(video_segs[0]) + [IMAGE] * 256 + seg(feature_segs[0]) + [FEATURE] * 4 \
        + seg(feature_segs[1])
    labels = [IGNORE_INDEX] * len(ids)
    if answer is not None:
        target = seg(answer + "</s>")  # end_sym "</s>": the EOS token
        ids, labels = ids + target, labels + target
    return ids, labels


def ours(tok, sentence, task, instruction, answer):
    proc = EmoProcessor(tok, "emotion_llama", SPANS)
    sample = emotion_llama_sample("c1", task, sentence, target=answer, modalities=MODALITIES, pool=[instruction])
    row = proc.encode(sample)
    media = {proc.media_token_ids[n]: n for n in proc.spans}
    ids = []
    seen_video = 0
    for t in row["input_ids"]:  # our media ids -> the reference's embedding markers, in text order
        if t in media:
            seen_video += media[t] == "video"
            ids.append(IMAGE if media[t] == "video" and seen_video <= 256 else FEATURE)
        else:
            ids.append(t)
    return ids, row["labels"], row, proc


INSTRUCTION = ("Please determine which emotion label in the video represents: happy, sad, neutral, angry, "
               "worried, surprise, fear, contempt, doubt.")


@pytest.mark.parametrize("sentence,answer", [("I can't believe you did that", "happy"),
                                             ("We lost again.", "sad"),
                                             ("Fine", None)])
def test_ids_and_labels_equal_minigpt_v2s(tok, sentence, answer):
    expected_ids, expected_labels = minigpt_v2_ids(tok, sentence, "emotion", INSTRUCTION, answer)
    ids, labels, _, _ = ours(tok, sentence, "emotion", INSTRUCTION, answer)
    assert ids == expected_ids
    assert labels == expected_labels


def test_feature_span_holds_face_video_audio_then_the_eva_cls(tok):
    """The 4 feature embeddings are face, VideoMAE, audio, CLS (``cat(video_feats, cls_tk_feats)``): our
    media tokens in that span are face, temporal, audio and the video modality's last token."""
    _, _, row, proc = ours(tok, "Hi there", "emotion", INSTRUCTION, "happy")
    names = {proc.media_token_ids[n]: n for n in proc.spans}
    order = [names[t] for t in row["input_ids"] if t in names]
    assert order == ["video"] * 256 + ["face", "temporal", "audio", "video"]
    assert row["media_present"] == ["audio", "face", "temporal", "video"]


def test_the_tail_placeholder_needs_its_modality(tok):
    proc = EmoProcessor(tok, "emotion_llama", SPANS)
    sample = emotion_llama_sample("c1", "emotion", "Hi", target="happy", modalities=("video", "face"), pool=["Q?"])
    with pytest.raises(EmollmError, match="<video_cls> holds the last 1 of <video>'s 257 media tokens"):
        proc.encode(sample)
    # a clip without the video drops both placeholders (and the wrapper) under "drop"
    row = proc.encode(emotion_llama_sample("c1", "emotion", "Hi", target="happy", modalities=MODALITIES, pool=["Q?"]),
                      present={"face", "temporal", "audio"})
    assert proc.media_token_ids["video"] not in row["input_ids"]
    assert "</video>" not in tok.decode(row["input_ids"])


def test_generation_prompt_ends_at_inst_close(tok):
    expected_ids, _ = minigpt_v2_ids(tok, "Hello", "emotion", INSTRUCTION, None)
    ids, labels, _, _ = ours(tok, "Hello", "emotion", INSTRUCTION, None)
    assert ids == expected_ids and set(labels) == {IGNORE_INDEX}
    assert tok.convert_ids_to_tokens(ids[-3:]) == tok.convert_ids_to_tokens(tok("[/INST]", add_special_tokens=False).input_ids)[-3:]
