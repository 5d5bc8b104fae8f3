"""Emotion labels from free text: the strategies of ``evaluate.parse``. English and Chinese alike.

- ``reasoning`` (default): reads a reasoning paragraph. Every emotion word of the set (labels and the
  synonyms of ``synonyms.yaml`` / ``synonyms_zh.yaml``, through :meth:`LabelSet.normalize`) is found;
  a negated one ("not happy", "no sign of anger", "rather than sad", 没有生气, 并不开心, 而不是愤怒)
  does not count; the label is the first emotion after the last concluding cue that has one in its
  sentence ("... suggests that she feels angry", "the emotion is 愤怒", 综上/因此/表明 ...), else the last
  emotion named. "not sad but happy" -> happy.
- ``last_word`` (Emotion-LLaMA): the last word of the answer that is a label of the set, exactly
  (``"... the emotion is happy."`` -> ``happy``). Synonyms are not labels here.
- ``first_mention``: the first word (or two-word phrase) that is a label of the set, exactly.
- ``synonym``: like ``last_word`` but every word or two-word phrase goes through
  :meth:`LabelSet.normalize`, so ``"she looks joyful"`` -> ``happy`` (MERR) / ``joy`` (MELD); no
  negation handling.
- ``emotion_llama``: Emotion-LLaMA's ``eval_emotion.py`` verbatim (the last space-separated token).

Chinese has no word boundaries: the text is cut by matching, at each position, the longest entry of the
emotion-word table (and of the negation / concluding-cue lists), else one character; so 不开心 is one word
(sad), never 开心 (happy). Latin words are read as before (lower-cased ``[a-z]`` words).

What none of these finds is *invalid*: :func:`parse_label` then gives the configured fallback label
(Emotion-LLaMA maps it to ``neutral``) or ``None`` (counted wrong); either way the result says it was
invalid, so the report can state the invalid rate.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from emollm.dataset.label_sets import LabelSet, synonyms
from emollm.errors import ConfigError

Strategy = Literal["reasoning", "last_word", "first_mention", "synonym", "emotion_llama"]
STRATEGIES: tuple[str, ...] = ("reasoning", "last_word", "first_mention", "synonym", "emotion_llama")
DEFAULT_STRATEGY = "reasoning"
LANGUAGES: tuple[str, ...] = ("en", "zh")

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_CHAR = re.compile(f"[{CJK}]")
_LATIN = r"[a-z]+(?:[-'’][a-z]+)*"
_LATIN_WORD = re.compile(_LATIN)

# -- English cue words (lower-cased tokens)
NEGATIONS_EN = frozenset({
    "not", "no", "never", "nor", "neither", "without", "hardly", "barely", "nothing", "none", "lack", "lacks",
    "lacking", "absence", "absent", "devoid", "isn't", "aren't", "wasn't", "weren't", "doesn't", "don't",
    "didn't", "won't", "cannot", "can't", "couldn't", "shouldn't", "wouldn't", "isn’t", "doesn’t", "don’t",
    "didn’t", "wasn’t", "aren’t", "can’t", "couldn’t", "than", "instead"})  # "rather than X", "instead of X"
# a negation followed by one of these does not negate what follows ("not only", "can't hide her anger")
_NOT_NEGATING_NEXT = frozenset({"only", "hide", "hides", "conceal", "mask", "suppress", "help", "but", "just"})
BREAKS_EN = frozenset({"but", "however", "yet", "although", "though", "while", "whereas", "despite", "still",
                       "nevertheless", "nonetheless", "actually"})
MARKERS_EN = frozenset({
    "suggest", "suggests", "suggested", "suggesting", "indicate", "indicates", "indicated", "indicating", "imply",
    "implies", "implying", "reveal", "reveals", "revealing", "show", "shows", "showing", "conclude", "concluded",
    "conclusion", "therefore", "thus", "hence", "overall", "summary", "ultimately", "likely", "probably",
    "seem", "seems", "seemed", "appear", "appears", "appeared", "feel", "feels", "felt", "feeling", "emotion",
    "emotions", "emotional", "mood", "actually", "really", "clearly", "evidently", "experiencing",
    "experiences", "express", "expresses", "expressing", "conveys", "convey", "displays", "label", "answer",
    "category", "predominantly", "mainly", "primarily"})
_CONJ_EN = frozenset({"or", "and", "nor", "any", "even", "a", "of", "sign", "signs", "trace", "hint"})

# -- Chinese cue words (matched as table entries, longest first)
NEGATIONS_ZH = ("不", "没", "没有", "沒", "沒有", "并不", "并没有", "並不", "並沒有", "不是", "并非", "並非", "毫无",
                "毫無", "无", "無", "未", "别", "別", "非", "不再", "不太", "不怎么", "谈不上", "算不上", "缺乏",
                "缺少", "而非")
BREAKS_ZH = ("但", "但是", "却", "卻", "而是", "可是", "然而", "不过", "不過", "反而", "其实", "其實", "实际上",
             "實際上", "虽然", "雖然", "尽管", "儘管")
MARKERS_ZH = ("综上", "综上所述", "綜上", "总之", "總之", "总的来说", "總的來說", "因此", "所以", "由此", "表明", "说明",
              "說明", "显示", "顯示", "推断", "推斷", "推测", "推測", "判断", "判斷", "可以看出", "看出", "情绪", "情緒",
              "情感", "心情", "感到", "感觉", "感覺", "显得", "顯得", "似乎", "可能", "其实", "其實", "实际上",
              "實際上", "流露", "流露出", "表现出", "表現出", "透露", "透露出", "处于", "處於")
# words that start with a negation character but negate nothing (very, can't help, keeps, not only ...)
NEUTRAL_ZH = ("非常", "不断", "不斷", "不同", "不禁", "不由", "不由得", "不停", "不少", "不仅", "不僅", "不但", "不久",
              "不知不觉", "不免", "不得不", "不时", "不時", "无法", "無法", "无论", "無論", "未来", "未來", "别人",
              "別人", "没想到", "沒想到", "毫不掩饰", "毫不掩飾", "不如", "忍不住", "无比", "無比", "不住", "非得",
              "无意", "無意", "不知道", "不知", "难以掩饰", "難以掩飾")
_CONJ_ZH = frozenset({"或", "或者", "和", "与", "與", "也", "、", "及", "任何", "任", "何", "一", "丝", "絲", "点", "點",
                      "的", "迹", "象", "很", "太", "是", "感到", "表现出", "表現出", "显得", "顯得"})
_SENTENCE_END = frozenset(".!?。！？\n")
_PUNCT = ".!?;:,。！？；：，\n()（）\"“”"
WINDOW_EN, WINDOW_ZH = 4, 6  # tokens a negation reaches forward, within its clause


@functools.lru_cache(maxsize=32)
def _token_regex(cjk_words: frozenset[str], punctuation: bool) -> re.Pattern[str]:
    entries = sorted(cjk_words | set(NEGATIONS_ZH) | set(BREAKS_ZH) | set(MARKERS_ZH) | set(NEUTRAL_ZH),
                     key=lambda w: (-len(w), w))
    parts = [re.escape(w) for w in entries] + [_LATIN, f"[{CJK}]"]
    if punctuation:
        parts.append(f"[{re.escape(_PUNCT)}]")
    return re.compile("|".join(parts))


def _cjk_keys(table: Iterable[str]) -> frozenset[str]:
    return frozenset(w for w in table if _CJK_CHAR.search(w))


def tokens(text: str, table: Iterable[str] | None = None) -> list[str]:
    """Words of ``text`` (lower-cased): latin words, Chinese table entries (longest match), else one CJK
    character each. ``table``: the words to match (default: every language's emotion-word table)."""
    keys = _cjk_keys(synonyms() if table is None else table)
    return _token_regex(keys, False).findall(text.lower())


class _WordPattern:
    """``WORD_PATTERN.findall(lowered_text)``: the words of a text as label parsing reads them (latin
    words; Chinese emotion words of the tables and negations as whole words; other CJK characters one by
    one). Kept as a pattern-like object for the dataset builder's reasoning filter."""

    @property
    def _re(self) -> re.Pattern[str]:
        return _token_regex(_cjk_keys(synonyms()), False)

    def findall(self, text: str) -> list[str]:
        return self._re.findall(text)

    def finditer(self, text: str):  # noqa: ANN201 - re's iterator
        return self._re.finditer(text)

    @property
    def pattern(self) -> str:
        return self._re.pattern


WORD_PATTERN = _WordPattern()


def detect_language(text: str | None) -> str | None:
    """``zh`` when CJK characters outnumber latin words / 2 (Chinese runs one character per syllable),
    ``en`` when latin words dominate, None for text with neither."""
    if not text:
        return None
    cjk = len(_CJK_CHAR.findall(text))
    latin = len(_LATIN_WORD.findall(text.lower()))
    if not cjk and not latin:
        return None
    return "zh" if cjk >= max(1, latin) * 2 or (cjk and not latin) else "en"


def dominant_language(texts: Iterable[str | None]) -> str | None:
    counts = Counter(lang for lang in map(detect_language, texts) if lang)
    return counts.most_common(1)[0][0] if counts else None


def language_counts(texts: Iterable[str | None]) -> dict[str, int]:
    counts = Counter(detect_language(t) or "none" for t in texts)
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class Mention:
    value: str  # the set's label (or the canonical emotion, for a plain table)
    word: str  # as written (lower-cased)
    index: int  # token position
    sentence: int
    negated: bool
    after_marker: int | None  # token index of the last concluding cue before it in its sentence


def mentions(text: str, table: Mapping[str, str] | None = None) -> list[Mention]:
    """Every emotion word of ``table`` (word -> value; default: the canonical synonym table) in ``text``,
    in order, with whether a negation reaches it and the concluding cue it follows."""
    table = synonyms() if table is None else table
    toks = _token_regex(_cjk_keys(table), True).findall(text.lower())
    out: list[Mention] = []
    sentence, marker = 0, None
    negators: list[int] = []  # token indexes of negations in the current clause
    last_neg_mention: int | None = None  # index of the last negated mention of this clause
    i = 0
    while i < len(toks):
        tok = toks[i]
        if len(tok) == 1 and tok in _PUNCT:
            if tok in _SENTENCE_END:
                sentence, marker = sentence + 1, None
            if tok not in "、":
                negators, last_neg_mention = [], None
            i += 1
            continue
        if tok in BREAKS_EN or tok in BREAKS_ZH:
            negators, last_neg_mention = [], None
        value, width = None, 1
        if i + 1 < len(toks) and _LATIN_WORD.fullmatch(tok) and _LATIN_WORD.fullmatch(toks[i + 1]):
            phrase = f"{tok} {toks[i + 1]}"
            if phrase in table:
                value, width, tok = table[phrase], 2, phrase
        if value is None:
            value = table.get(tok)
        if value is not None:
            zh = bool(_CJK_CHAR.search(tok))
            window = WINDOW_ZH if zh else WINDOW_EN
            negated = any(i - n <= window for n in negators)
            if not negated and last_neg_mention is not None:  # "no fear or sadness", 没有愤怒或悲伤
                between = toks[last_neg_mention + 1:i]
                negated = all(t in _CONJ_EN or t in _CONJ_ZH for t in between)
            out.append(Mention(value, tok, i, sentence, negated, marker))
            negators = []  # a negation reaches the next emotion only ("no doubt she is happy"), or a chain
            last_neg_mention = i + width - 1 if negated else None
            if tok in MARKERS_EN or tok in MARKERS_ZH:
                marker = i
            i += width
            continue
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if (tok in NEGATIONS_EN and nxt not in _NOT_NEGATING_NEXT and not (tok == "than" and (
                i == 0 or toks[i - 1] != "rather"))) or tok in NEGATIONS_ZH:
            if tok != "instead" or nxt == "of":
                negators.append(i)
        if tok in MARKERS_EN or tok in MARKERS_ZH:
            marker = i
        i += 1
    return out


def reasoning_label(text: str, table: Mapping[str, str]) -> str | None:
    """The ``reasoning`` strategy on a table: the first non-negated emotion after the last concluding cue
    that has one in its sentence, else the last non-negated emotion, else None."""
    found = [m for m in mentions(text, table) if not m.negated]
    if not found:
        return None
    concluded = [m for m in found if m.after_marker is not None]
    if concluded:
        last_marker = max(m.after_marker for m in concluded)
        return next(m.value for m in concluded if m.after_marker == last_marker)
    return found[-1].value


@dataclass(frozen=True)
class ParsedLabel:
    label: str | None  # the set's label, the fallback, or None (counted wrong)
    valid: bool  # False: nothing parsable was found (label is the fallback or None)
    reason: str | None = None  # why invalid: "empty", "no_label", "out_of_set"


def _candidates(text: str, label_set: LabelSet) -> list[str]:
    """Words then two-word phrases, in text order (a phrase sorts at its first word's position)."""
    words = tokens(text, label_set.lookup)
    out: list[tuple[int, int, str]] = []
    for i, w in enumerate(words):
        out.append((i, 1, w))
        if i + 1 < len(words) and _LATIN_WORD.fullmatch(w) and _LATIN_WORD.fullmatch(words[i + 1]):
            out.append((i, 0, f"{w} {words[i + 1]}"))  # the phrase wins over its own first word
    return [c for _, _, c in sorted(out)]


def excerpt(text: str | None, limit: int = 80) -> str:
    """A raw answer on one line, cut to ``limit`` characters (for error messages and reports)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


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


def find_label(text: str, label_set: LabelSet, strategy: str = DEFAULT_STRATEGY) -> str | None:
    """The label a strategy reads in ``text``, or None."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown label parsing strategy '{strategy}'", hint=f"one of {', '.join(STRATEGIES)}")
    if strategy == "emotion_llama":
        # Emotion-LLaMA's eval_emotion.py verbatim: the last space-separated token, as is (no case or
        # punctuation folding), must be a label; "happy." is therefore out of set.
        token = text.split(" ")[-1]
        return token if token in label_set else None
    if strategy == "reasoning":
        return reasoning_label(text, label_set.lookup)
    cands = _candidates(text, label_set)
    if strategy == "synonym":
        found = [label_set.normalize(c) for c in cands]
        found = [f for f in found if f is not None]
        return found[-1] if found else None
    found = [c for c in cands if c in label_set]
    if not found:
        return None
    return found[0] if strategy == "first_mention" else found[-1]


def parse_label(
    text: str | None, label_set: LabelSet, strategy: str = DEFAULT_STRATEGY, fallback: str | None = None
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
