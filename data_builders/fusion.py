"""Pseudo-labels from every cue: each cue votes, the votes are fused, the agreement is kept.

Voters (each optional; a cue that was not measured does not vote):

- ``au_rules``: the AU-rule label at the peak frame (:mod:`data_builders.rules`) with its confidence;
  on a still the baseline is the population face, not the person's own, so its weight is halved;
- ``expression``: the learned expression model's class probabilities over the face frames
  (:mod:`data_builders.expression`), weight 1;
- ``subtitle``: emotion words in the subtitle (the label set's synonyms table), weight 0.5; none said,
  no vote;
- ``tone``: the prosody's arousal (loud, wide-ranging, fast speech vs quiet, flat, slow), weight 0.25,
  spread over the label set's high- or low-arousal emotions: it can tip a close call, never decide one.

Fusion: each voter gives a distribution over the run's label set (a labelled vote with strength s puts
``s`` on its label and ``1 - s`` spread evenly); the fused distribution is their weighted mean. The
pseudo-label is its top label; ``confidence`` = top probability x agreement, where agreement is the
weight share of the deciding voters (rules, expression, subtitle) whose own top label is the fused one.
A clip where any deciding voter's own label differs from the fused one is flagged ``cues_disagree``
and goes to review (``emollm review export``), whatever its confidence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from emollm.dataset.label_sets import LabelSet

VERSION = "fusion/1"
WEIGHTS = {"au_rules": 1.0, "expression": 1.0, "subtitle": 0.5, "tone": 0.25}
STILL_RULE_WEIGHT = 0.5
DECIDING = ("au_rules", "expression", "subtitle")
MIN_STRENGTH = 0.05
HIGH_AROUSAL = ("angry", "happy", "surprise", "fear", "disgust")
LOW_AROUSAL = ("sad", "neutral", "worried", "doubt", "contempt")


@dataclass
class Vote:
    cue: str
    label: str | None  # the voter's own top label in the run's label set (None: arousal-only)
    strength: float  # 0-1
    weight: float
    distribution: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"label": self.label, "strength": round(self.strength, 4), "weight": self.weight}
        return out | ({"detail": self.detail} if self.detail else {})


@dataclass
class Fused:
    label: str
    confidence: float
    agreement: float
    distribution: dict[str, float]
    votes: dict[str, Vote]

    @property
    def disagree(self) -> bool:
        """Some deciding voter's own label is not the fused one."""
        return self.agreement < 1.0


def _spread(label_set: LabelSet, label: str | None, strength: float) -> dict[str, float]:
    labels = list(label_set.labels)
    rest = (1.0 - strength) / len(labels)
    return {lab: rest + (strength if lab == label else 0.0) for lab in labels}


def rule_vote(label: str, confidence: float, label_set: LabelSet, *, still: bool) -> Vote:
    weight = WEIGHTS["au_rules"] * (STILL_RULE_WEIGHT if still else 1.0)
    strength = max(0.0, min(1.0, float(confidence)))
    return Vote("au_rules", label, strength, weight, _spread(label_set, label, strength))


def expression_vote(probabilities: dict[str, float], label_set: LabelSet, *, model: str) -> Vote | None:
    dist = {lab: 0.0 for lab in label_set.labels}
    for name, p in probabilities.items():
        lab = label_set.normalize(name)
        if lab is not None:
            dist[lab] += float(p)
    total = sum(dist.values())
    if total <= 0:
        return None
    dist = {k: v / total for k, v in dist.items()}
    top = max(dist, key=dist.get)
    return Vote("expression", top, dist[top], WEIGHTS["expression"], dist, {"model": model})


# synonyms that are mostly not about feelings in running speech ("sit down", "the content")
AMBIGUOUS = frozenset({"down", "content", "none", "plain"})
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?", re.UNICODE)


def subtitle_vote(subtitle: str | None, label_set: LabelSet) -> Vote | None:
    """Emotion words the speaker says (``"I'm so happy"``), through the label set's synonyms."""
    if not subtitle:
        return None
    words = [w.lower() for w in _WORD.findall(subtitle)]
    counts: dict[str, int] = {}
    for i, w in enumerate(words):
        lab = label_set.normalize(w)
        if lab is None and i + 1 < len(words):
            lab = label_set.normalize(f"{w} {words[i + 1]}")
        if lab is None or w in AMBIGUOUS or (i > 0 and words[i - 1] in ("not", "never", "no", "isn't", "don't", "wasn't")):
            continue
        counts[lab] = counts.get(lab, 0) + 1
    neutral = label_set.normalize("neutral")
    counts.pop(neutral, None)  # "calm", "none", "plain" said in passing are no evidence of neutral
    if not counts:
        return None
    top = max(counts, key=counts.get)
    strength = counts[top] / sum(counts.values()) * 0.6
    return Vote("subtitle", top, strength, WEIGHTS["subtitle"], _spread(label_set, top, strength),
                {"words": sum(counts.values())})


def tone_vote(prosody: dict[str, Any] | None, label_set: LabelSet) -> Vote | None:
    """Arousal from prosody: loud + wide pitch range + fast -> high; quiet + flat + slow -> low."""
    if not prosody or prosody.get("pitch_hz") is None:
        return None
    score = 0
    energy = prosody.get("energy_dbfs")
    rng = prosody.get("pitch_range_st")
    rate = prosody.get("syllable_rate")
    if energy is not None:
        score += 1 if energy > -20 else (-1 if energy < -32 else 0)
    if rng is not None:
        score += 1 if rng > 8 else (-1 if rng < 3 else 0)
    if rate is not None:
        score += 1 if rate > 5 else (-1 if rate < 2.5 else 0)
    if score == 0:
        return None
    group = HIGH_AROUSAL if score > 0 else LOW_AROUSAL
    members = {label_set.normalize(g) for g in group} - {None}
    if not members:
        return None
    strength = min(1.0, abs(score) / 3)
    dist = {lab: (1.0 - strength) / len(label_set.labels) + (strength / len(members) if lab in members else 0.0)
            for lab in label_set.labels}  # fmt: skip
    return Vote("tone", None, strength, WEIGHTS["tone"], dist, {"arousal": "high" if score > 0 else "low"})


def fuse(votes: list[Vote], label_set: LabelSet) -> Fused | None:
    votes = [v for v in votes if v is not None and v.weight > 0]
    if not votes:
        return None
    total = sum(v.weight for v in votes)
    dist = {lab: sum(v.weight * v.distribution.get(lab, 0.0) for v in votes) / total for lab in label_set.labels}
    top = max(label_set.labels, key=lambda lab: (dist[lab], -list(label_set.labels).index(lab)))
    # a voter with (almost) no strength abstains: the rules' "neutral" when strong AUs fired no rule
    deciding = [v for v in votes if v.cue in DECIDING and v.label is not None and v.strength >= MIN_STRENGTH]
    weight = sum(v.weight for v in deciding)
    agreement = sum(v.weight for v in deciding if v.label == top) / weight if weight else 0.0
    confidence = dist[top] * agreement
    return Fused(top, round(confidence, 4), round(agreement, 4), {k: round(p, 4) for k, p in dist.items()},
                 {v.cue: v for v in votes})


__all__ = ["Fused", "Vote", "VERSION", "expression_vote", "fuse", "rule_vote", "subtitle_vote", "tone_vote"]
