"""Filter the reasoning, split coarse vs. fine, write instruction JSONL per task.

- **Filter**: a reasoning is dropped (kept in the record, marked ``reasoning_filter.kept = false``) when
  the last emotion of the label set it names (labels and their synonyms, as the evaluator reads them)
  is not the clip's label (``contradicts_label``), when it names none (``label_not_mentioned``), when
  it also asserts another (non-neutral) emotion of the set anywhere (``mixed_emotions:<other>``; "not
  sad" is no assertion), when it stops mid-sentence (``truncated``: a reply cut at the writer's token limit), when
  it repeats itself (``repetitive``: a sentence twice or five words in a row three times, a small LLM's
  loop), or when its normalised text equals an
  earlier clip's (``duplicate_of:<id>``, ids in sorted order).
- **Split**: a record with a kept reasoning is ``fine``, every other record ``coarse``
  (``granularity``); a record without a split from the labels CSV takes its granularity as ``split``.
- **Instructions**: ``instructions/emotion.jsonl`` (every record with a label; target = the label) and
  ``instructions/reason.jsonl`` (fine records; target = the reasoning), one instruction sample a line
  (``emollm.prompts.emotion_llama_sample``: instruction chosen from ``prompts/instructions/<task>.txt``
  by sample id and ``run.seed``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emollm.dataset.label_parsing import find_label, mentions
from emollm.dataset.label_sets import LabelSet
from emollm.prompts import emotion_llama_sample

TASKS = ("emotion", "reason")


def record_label(rec: dict[str, Any]) -> str | None:
    """The label a record is trained on: the ground truth when given, else the pseudo-label."""
    return rec.get("label") or rec.get("pseudo_label")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


_SENTENCE_END = re.compile(r"[.!?。！？]+")
_ENDS = (".", "!", "?", "。", "！", "？", '"', "'", "”", "’", ")")


def asserted_emotions(text: str, label_set: LabelSet) -> list[str]:
    """The label-set emotions ``text`` names (labels and synonyms, English or Chinese), in order, except
    those a negation reaches ("not sad", "no sign of anger", 没有生气): the evaluator's reading."""
    return [m.value for m in mentions(text, label_set.lookup) if not m.negated]


def check_reasoning(text: str, label: str, label_set: LabelSet) -> str | None:
    """None when ``text`` supports ``label``; otherwise why it does not (see the module's doc)."""
    found = find_label(text, label_set, "synonym")
    want = label_set.normalize(label) or label
    if found is None:
        return "label_not_mentioned"
    if found != want:
        return f"contradicts_label:{found}"
    # "a calm voice" describes a cue more often than it concludes "neutral": only non-neutral emotions mix
    others = [e for e in asserted_emotions(text, label_set) if e not in (want, label_set.normalize("neutral"))]
    if others:
        return f"mixed_emotions:{others[0]}"
    if not text.rstrip().endswith(_ENDS):
        return "truncated"
    sentences = [_norm(x) for x in _SENTENCE_END.split(text)]
    sentences = [x for x in sentences if len(x.split()) >= 4]
    words = _norm(text).split()
    grams = Counter(tuple(words[i : i + 5]) for i in range(len(words) - 4))
    if len(sentences) != len(set(sentences)) or (grams and max(grams.values()) >= 3):
        return "repetitive"  # a sentence said twice, or five words in a row said three times
    return None


# check_reasoning's verdicts, by (label set, text, label): a review decision re-filters the whole dataset
# (the duplicate rule needs every record), but only the changed records' texts need reading again.
_VERDICTS: dict[tuple[Any, str, str], str | None] = {}
_MAX_VERDICTS = 200_000


def _checked(text: str, label: str, label_set: LabelSet) -> str | None:
    key = (label_set, text, label)
    if key not in _VERDICTS:
        if len(_VERDICTS) >= _MAX_VERDICTS:
            _VERDICTS.clear()
        _VERDICTS[key] = check_reasoning(text, label, label_set)
    return _VERDICTS[key]


def filter_reasoning(records: Sequence[dict[str, Any]], label_set: LabelSet) -> None:
    """Set ``reasoning_filter`` and ``granularity`` on each record (in place)."""
    seen: dict[str, str] = {}
    for rec in sorted(records, key=lambda r: r["id"]):
        text, label = rec.get("reasoning"), record_label(rec)
        if not text or not label:
            rec["reasoning_filter"] = None
            rec["granularity"] = "coarse"
            continue
        reason = _checked(text, label, label_set)
        key = _norm(text)
        if reason is None and key in seen:
            reason = f"duplicate_of:{seen[key]}"
        if reason is None:
            seen[key] = rec["id"]
        rec["reasoning_filter"] = {"kept": reason is None, "reason": reason}
        rec["granularity"] = "fine" if reason is None else "coarse"


def instruction_samples(records: Sequence[dict[str, Any]], seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    from emollm.prompts import load_instruction_pool

    out: dict[str, list[dict[str, Any]]] = {t: [] for t in TASKS}
    pools = {task: load_instruction_pool(task) for task in TASKS}  # read once, not once per record
    for rec in records:
        label = record_label(rec)
        if not label:
            continue
        extra = {"split": rec.get("split"), "granularity": rec.get("granularity", "coarse"),
                 "media": rec["media"]["path"]}
        s = emotion_llama_sample(rec["id"], "emotion", rec.get("subtitle"), target=label, label=label, seed=seed,
                                 pool=pools["emotion"])
        out["emotion"].append(s | extra)
        if rec.get("granularity") == "fine" and rec.get("reasoning"):
            s = emotion_llama_sample(rec["id"], "reason", rec.get("subtitle"), target=rec["reasoning"], label=label,
                                     seed=seed, pool=pools["reason"])
            out["reason"].append(s | extra)
    return out


def write_instructions(records: Sequence[dict[str, Any]], out_dir: str | Path, seed: int, write) -> dict[str, int]:  # noqa: ANN001
    """``<out>/instructions/<task>.jsonl`` via ``write(path, text)`` (atomic); counts per task."""
    samples = instruction_samples(records, seed)
    folder = Path(out_dir) / "instructions"
    for task, rows in samples.items():
        write(folder / f"{task}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {t: len(v) for t, v in samples.items()}


__all__ = ["TASKS", "check_reasoning", "filter_reasoning", "instruction_samples", "record_label", "write_instructions"]
