"""Pseudo-labels from every cue: votes, fusion, agreement and the review route."""

from __future__ import annotations

import pytest

from data_builders import fusion
from data_builders.review import review_reasons
from emollm.dataset.label_sets import load_label_set


@pytest.fixture(scope="module")
def dfew():
    return load_label_set("dfew")


def test_agreeing_cues_give_a_confident_label(dfew):
    votes = [fusion.rule_vote("happy", 0.7, dfew, still=False),
             fusion.expression_vote({"happy": 0.9, "neutral": 0.1}, dfew, model="m")]
    fused = fusion.fuse(votes, dfew)
    assert fused.label == "happy" and fused.agreement == 1.0 and fused.confidence > 0.6 and not fused.disagree


def test_disagreeing_cues_go_to_review_with_low_confidence(dfew):
    votes = [fusion.rule_vote("sad", 0.3, dfew, still=True),
             fusion.expression_vote({"angry": 0.6, "sad": 0.3, "neutral": 0.1}, dfew, model="m")]
    fused = fusion.fuse(votes, dfew)
    # the expression model outweighs a still's rules (their baseline is the population face, not the person's)
    assert fused.label == "angry" and fused.disagree and fused.confidence < 0.5
    record = {"pseudo_label": fused.label, "pseudo_label_confidence": fused.confidence, "flags": ["cues_disagree"]}
    assert "cues_disagree" in review_reasons(record, threshold=0.1)


def test_expression_classes_outside_the_label_set_drop_out():
    mer = load_label_set("mer2023")  # no disgust, no fear
    vote = fusion.expression_vote({"disgust": 0.5, "fear": 0.2, "sad": 0.3}, mer, model="m")
    assert vote.label == "sad" and vote.distribution["sad"] == pytest.approx(1.0)


def test_subtitle_words_vote_and_negation_does_not(dfew):
    assert fusion.subtitle_vote("I am so happy today!", dfew).label == "happy"
    assert fusion.subtitle_vote("I'm not happy about it", dfew) is None
    assert fusion.subtitle_vote("The train leaves at nine.", dfew) is None
    assert fusion.subtitle_vote("我很高兴", dfew) is None  # no Chinese words in the table yet: no vote, no crash


def test_tone_tips_a_close_call_but_never_decides_alone(dfew):
    loud = {"pitch_hz": 220, "energy_dbfs": -12, "pitch_range_st": 11, "syllable_rate": 6}
    tone = fusion.tone_vote(loud, dfew)
    assert tone.label is None and tone.detail["arousal"] == "high"
    only_tone = fusion.fuse([tone], dfew)
    assert only_tone.confidence == 0.0  # no deciding voter: nothing confident
    close = [fusion.expression_vote({"angry": 0.45, "sad": 0.55}, dfew, model="m"),
             fusion.rule_vote("angry", 0.2, dfew, still=False), tone]
    assert fusion.fuse(close, dfew).label == "angry"


def test_a_powerless_neutral_rule_vote_abstains(dfew):
    """Strong AUs that fire no rule give a 'neutral' of strength 0: that is no disagreement."""
    votes = [fusion.rule_vote("neutral", 0.0, dfew, still=False),
             fusion.expression_vote({"happy": 0.8, "neutral": 0.2}, dfew, model="m")]
    fused = fusion.fuse(votes, dfew)
    assert fused.label == "happy" and fused.agreement == 1.0 and not fused.disagree
