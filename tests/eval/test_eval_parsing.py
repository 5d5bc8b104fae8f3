"""Label parsing strategies, fallback and invalid handling."""

from __future__ import annotations

import pytest

from emollm.dataset.label_parsing import find_label, normalize_given_label, parse_label
from emollm.dataset.label_sets import load_label_set
from emollm.errors import ConfigError

MERR = load_label_set("merr")
MELD = load_label_set("meld")


def test_strategies() -> None:
    text = "At first happy, but in the end the person is sad."
    assert find_label(text, MERR, "last_word") == "sad"
    assert find_label(text, MERR, "first_mention") == "happy"
    assert find_label("She looks joyful and delighted", MERR, "last_word") is None
    assert find_label("She looks joyful and delighted", MERR, "synonym") == "happy"
    assert find_label("She looks joyful", MELD, "synonym") == "joy"
    assert find_label("He is grossed out", MERR, "synonym") is None  # not a MERR emotion
    assert find_label("Neutral.", MERR, "last_word") == "neutral"


def test_fallback_and_invalid() -> None:
    p = parse_label("no emotion word here at all", MERR, "last_word", "neutral")
    assert (p.label, p.valid, p.reason) == ("neutral", False, "no_label")
    p = parse_label("   ", MERR, "last_word", None)
    assert (p.label, p.valid, p.reason) == (None, False, "empty")
    assert parse_label("happy", MERR, "last_word", None).valid
    with pytest.raises(ConfigError, match="fallback_label"):
        parse_label("x", load_label_set("dfew"), "last_word", "doubt")
    with pytest.raises(ConfigError, match="strategy"):
        find_label("x", MERR, "nope")


def test_given_labels() -> None:
    assert normalize_given_label("Joyful", MERR).label == "happy"
    p = normalize_given_label("bored", MERR, None)
    assert (p.label, p.valid, p.reason) == (None, False, "out_of_set")
