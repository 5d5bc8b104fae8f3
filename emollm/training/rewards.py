"""Verifiable rewards for GRPO (``train.stage: grpo``, docs/training.md "GRPO"), by name.

A reward scores each sampled answer of a batch in [0, 1]; ``train.grpo.rewards`` names the ones a run
uses, each with its weight (the total is their weighted sum). Register another with::

    @register_reward("mine")
    def mine(answers: list[str], ctx: RewardContext) -> list[float]: ...

Shipped:

- ``format``: the answer has the expected shape (``train.grpo.answer_format``):
  ``label`` (emollm's own, the default): the last non-empty line ends in one label of the set, either
  alone (the ``emotion`` task's SFT target: ``happy``) or after a colon (a reasoning, then
  ``... Therefore the emotion is: happy``); ``think_answer`` (R1-Omni): ``<think>…</think><answer>label</answer>``
  and nothing else, the answer one label of the set.
- ``accuracy``: the label read from the answer (its ``<answer>`` under ``think_answer``) by emollm's label
  parsing (``evaluate.parse``; no fallback label: unparsable is wrong) equals the clip's reference
  (its human label, else its pseudo-label, per ``evaluate.reference_source``); 0 without a reference.
- ``length``: 1 when the answer ended with a stop token within ``train.grpo.max_new_tokens``, 0 when
  it was cut off.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from emollm.errors import ConfigError

RewardFn = Callable[[list[str], "RewardContext"], list[float]]
REWARDS: dict[str, RewardFn] = {}
ANSWER_FORMATS = ("label", "think_answer")

_THINK_ANSWER = re.compile(r"\s*<think>(.+?)</think>\s*<answer>(.+?)</answer>\s*", re.DOTALL)
_TRAILING = " \t.。!！;；,，\"'`*"


@dataclass
class RewardContext:
    """What a reward may look at beside the answers (one entry per answer, same order)."""

    label_set: Any  # emollm.dataset.label_sets.LabelSet
    references: Sequence[str | None]  # the reference label of each answer's clip (of the set), None: none
    truncated: Sequence[bool] = field(default_factory=list)  # the answer hit max_new_tokens without a stop token
    answer_format: str = "label"
    parse: str = "reasoning"  # evaluate.parse strategy


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make ``fn(answers, ctx) -> list[float]`` available as ``train.grpo.rewards.<name>``."""

    def wrap(fn: RewardFn) -> RewardFn:
        REWARDS[name] = fn
        return fn

    return wrap


def get_reward(name: str) -> RewardFn:
    if name not in REWARDS:
        raise ConfigError(f"unknown reward '{name}'", hint=f"train.grpo.rewards names of: {', '.join(sorted(REWARDS))}")
    return REWARDS[name]


def final_answer(text: str, answer_format: str) -> str | None:
    """The part of ``text`` that holds the label: the ``<answer>`` under ``think_answer``; the whole
    text under ``label`` (the parser finds the concluding label in a reasoning). None: malformed."""
    if answer_format == "think_answer":
        m = _THINK_ANSWER.fullmatch(text)
        return m.group(2).strip() if m else None
    if answer_format == "label":
        return text
    raise ConfigError(f"unknown answer format '{answer_format}'", hint=f"one of {', '.join(ANSWER_FORMATS)}")


def _is_label(text: str, label_set: Any) -> bool:
    return text.strip(_TRAILING).lower() in {label.lower() for label in label_set.labels}


def format_ok(text: str, answer_format: str, label_set: Any) -> bool:
    """Whether ``text`` has the shape of ``answer_format`` (see the module docstring)."""
    if answer_format == "think_answer":
        answer = final_answer(text, answer_format)
        return answer is not None and _is_label(answer, label_set)
    final_answer(text, answer_format)  # checks the name
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return False
    last = lines[-1]
    cut = max(last.rfind(":"), last.rfind("："))
    return _is_label(last[cut + 1:] if cut >= 0 else last, label_set)


@register_reward("format")
def format_reward(answers: list[str], ctx: RewardContext) -> list[float]:
    return [float(format_ok(a, ctx.answer_format, ctx.label_set)) for a in answers]


@register_reward("accuracy")
def accuracy_reward(answers: list[str], ctx: RewardContext) -> list[float]:
    from emollm.dataset.label_parsing import parse_label

    out = []
    for answer, reference in zip(answers, ctx.references, strict=True):
        part = final_answer(answer, ctx.answer_format)
        if reference is None or part is None:
            out.append(0.0)
            continue
        parsed = parse_label(part, ctx.label_set, ctx.parse, None)
        out.append(float(parsed.valid and parsed.label == reference))
    return out


@register_reward("length")
def length_reward(answers: list[str], ctx: RewardContext) -> list[float]:
    if not ctx.truncated:
        return [1.0] * len(answers)
    return [0.0 if cut else 1.0 for cut in ctx.truncated]


def score(answers: list[str], ctx: RewardContext, weights: dict[str, float]) -> tuple[list[float], dict[str, list[float]]]:
    """``(total per answer, {reward name: per answer})``: the weighted sum of the named rewards."""
    per = {name: [float(x) for x in get_reward(name)(answers, ctx)] for name in weights}
    for name, values in per.items():
        if len(values) != len(answers):
            raise ConfigError(f"reward '{name}' gave {len(values)} scores for {len(answers)} answers")
    total = [sum(weights[name] * per[name][i] for name in weights) for i in range(len(answers))]
    return total, per


__all__ = ["ANSWER_FORMATS", "REWARDS", "RewardContext", "accuracy_reward", "final_answer", "format_ok",
           "format_reward", "get_reward", "length_reward", "register_reward", "score"]
