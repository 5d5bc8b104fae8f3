"""Emotion labels from free text: the strategies of ``evaluate.parse``.

- ``last_word`` (Emotion-LLaMA): the last word of the answer that is a label of the set, exactly
  (``"... the emotion is happy."`` -> ``happy``). Synonyms are not labels here.
- ``first_mention``: the first word (or two-word phrase) that is a label of the set, exactly.
- ``synonym``: like ``last_word`` but every word or two-word phrase goes through
  :meth:`LabelSet.normalize`, so ``"she looks joyful"`` -> ``happy`` (MERR) / ``joy`` (MELD).

What none of these finds is *invalid*: :func:`parse_label` then gives the configured fallback label
(Emotion-LLaMA maps it to ``neutral``) or ``None`` (counted wrong); either way the result says it was
invalid, so the report can state the invalid rate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from emollm.errors import ConfigError
from eval.label_sets import LabelSet

Strategy = Literal["last_word", "first_mention", "synonym", "emotion_llama"]
STRATEGIES: tuple[str, ...] = ("last_word", "first_mention", "synonym", "emotion_llama")

WORD_PATTERN = re.compile(r"[a-z]+(?:[-'][a-z]+)*")  # a word as label parsing reads it (lower-cased text)


@dataclass(frozen=True)
class ParsedLabel:
    label: str | None  # the set's label, the fallback, or None (counted wrong)
    valid: bool  # False: nothing parsable was found (label is the fallback or None)
    reason: str | None = None  # why invalid: "empty", "no_label", "out_of_set"


def _candidates(text: str) -> list[str]:
    """Words then two-word phrases, in text order (a phrase sorts at its first word's position)."""
    words = WORD_PATTERN.findall(text.lower())
    out: list[tuple[int, int, str]] = []
    for i, w in enumerate(words):
        out.append((i, 1, w))
        if i + 1 < len(words):
            out.append((i, 0, f"{w} {words[i + 1]}"))  # the phrase wins over its own first word
    return [c for _, _, c in sorted(out)]


def check_fallback(label_set: LabelSet, fallback: str | None) -> str | None:
    if fallback is None:
        return None
    label = label_set.normalize(fallback)
    if label is None:
        raise ConfigError(
            f"evaluate.fallback_label '{fallback}' is not a label of the '{label_set.name}' set",
            hint=f"use one of {', '.join(label_set.labels)}, or null to count unparsable answers as wrong",
        )
    return label


def find_label(text: str, label_set: LabelSet, strategy: str = "last_word") -> str | None:
    """The label a strategy reads in ``text``, or None."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown label parsing strategy '{strategy}'", hint=f"one of {', '.join(STRATEGIES)}")
    if strategy == "emotion_llama":
        # Emotion-LLaMA's eval_emotion.py verbatim: the last space-separated token, as is (no case or
        # punctuation folding), must be a label; "happy." is therefore out of set.
        token = text.split(" ")[-1]
        return token if token in label_set else None
    cands = _candidates(text)
    if strategy == "synonym":
        found = [label_set.normalize(c) for c in cands]
        found = [f for f in found if f is not None]
        return found[-1] if found else None
    found = [c for c in cands if c in label_set]
    if not found:
        return None
    return found[0] if strategy == "first_mention" else found[-1]


def parse_label(
    text: str | None, label_set: LabelSet, strategy: str = "last_word", fallback: str | None = None
) -> ParsedLabel:
    """Parse one free-text answer; unparsable text gives ``fallback`` (checked against the set)."""
    fallback = check_fallback(label_set, fallback)
    if text is None or not str(text).strip():
        return ParsedLabel(fallback, False, "empty")
    label = find_label(str(text), label_set, strategy)
    if label is None:
        return ParsedLabel(fallback, False, "no_label")
    return ParsedLabel(label, True)


def normalize_given_label(label: str | None, label_set: LabelSet, fallback: str | None = None) -> ParsedLabel:
    """A prediction's own ``label`` field: the set's label (synonyms accepted) or invalid ("out_of_set")."""
    fallback = check_fallback(label_set, fallback)
    if label is None or not str(label).strip():
        return ParsedLabel(fallback, False, "empty")
    norm = label_set.normalize(str(label))
    if norm is None:
        return ParsedLabel(fallback, False, "out_of_set")
    return ParsedLabel(norm, True)
