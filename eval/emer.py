"""EMER reasoning scores: clue overlap and label overlap (1-10) with the two-step judge protocol.

Prompts exist in English (``prompts/judge/``) and Chinese (``prompts/judge/zh/``), chosen by
``evaluate.language`` (``auto``: the texts' language). Step 1: for the ground-truth reasoning and for the prediction, the judge summarises the emotion clues
(``prompts/judge/clue_summary.txt``) and extracts the emotion words (``emotion_words.txt``). Step 2: it
rates the overlap of the two clue summaries (``clue_score.txt``) and of the two word lists
(``label_score.txt``) from 1 to 10. A step-1 reply must be non-empty and a step-2 reply must hold a score
(:func:`parse_score`); otherwise it is retried and then recorded invalid. A sample whose step 1 failed
gets no step-2 call and an invalid score. Averages are over the valid scores; the invalid count is
reported next to them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emollm.dataset.label_parsing import excerpt
from emollm.errors import JudgeError
from emollm.resources import prompts_dir
from eval.judges import Judge

PROMPTS = ("clue_summary", "emotion_words", "clue_score", "label_score")
LANGUAGES = {"en": ".", "zh": "zh"}  # the prompts' folder under prompts/judge/, per language
SCORES = ("clue_overlap", "label_overlap")

_SCORE = re.compile(r"(?:score|分数|得分|评分|分數|評分)\s*(?:is|:|：|=|为|是|為)?\s*\**\s*(\d+(?:\.\d+)?)\s*(?:/\s*10|分)?",
                    re.IGNORECASE)
_BARE = re.compile(r"^\W*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\W*$")


def parse_score(reply: str | None, low: float = 1.0, high: float = 10.0) -> float | None:
    """The score in a reply (``Score: 7``, ``score is 7/10``, ``分数：7``, or a bare ``7``) if it lies in [low, high].

    Several different scores, no score, or a score out of range give None (never a guess).
    """
    if not reply:
        return None
    found = {float(m) for m in _SCORE.findall(reply)}
    if not found:
        bare = _BARE.match(reply.strip())
        found = {float(bare.group(1))} if bare else set()
    if len(found) != 1:
        return None
    value = found.pop()
    return value if low <= value <= high else None


def _nonempty(reply: str) -> str | None:
    return reply.strip() or None


def load_prompts(folder: str | Path | None = None, language: str = "en") -> dict[str, str]:
    """The judge prompts of ``language`` (``en``: ``prompts/judge/*.txt``, ``zh``: ``prompts/judge/zh/``),
    or of ``folder``."""
    if language not in LANGUAGES:
        raise JudgeError(f"no judge prompts for language '{language}'", hint=f"one of {', '.join(LANGUAGES)}")
    folder = Path(folder) if folder else prompts_dir() / "judge" / LANGUAGES[language]
    out = {}
    for name in PROMPTS:
        path = folder / f"{name}.txt"
        if not path.is_file():
            raise JudgeError(f"judge prompt {path} is missing")
        out[name] = path.read_text(encoding="utf-8").strip()
    return out


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


@dataclass
class EmerResult:
    id: str
    clue_overlap: float | None
    label_overlap: float | None
    errors: dict
    invalid_replies: dict = field(default_factory=dict)  # step -> the raw reply the validator rejected


def score_one(judge: Judge, prompts: dict[str, str], id_: str, reference: str, prediction: str) -> EmerResult:
    errors: dict = {}
    replies: dict = {}
    step1 = {}
    for side, text in (("reference", reference), ("prediction", prediction)):
        for name in ("clue_summary", "emotion_words"):
            ans = judge.ask(_fill(prompts[name], text=text), _nonempty)
            step1[(side, name)] = ans.value
            if not ans.valid:
                errors[f"{side}.{name}"] = ans.error
                if ans.reply is not None:
                    replies[f"{side}.{name}"] = ans.reply
    scores: dict[str, float | None] = {}
    for score, step1_name, prompt in (("clue_overlap", "clue_summary", "clue_score"),
                                      ("label_overlap", "emotion_words", "label_score")):
        ref, pred = step1[("reference", step1_name)], step1[("prediction", step1_name)]
        if ref is None or pred is None:
            scores[score] = None
            errors.setdefault(score, "step 1 failed")
            continue
        ans = judge.ask(_fill(prompts[prompt], reference=ref, prediction=pred), parse_score)
        scores[score] = ans.value
        if not ans.valid:
            errors[score] = ans.error
            if ans.reply is not None:
                replies[score] = ans.reply
    return EmerResult(id_, scores["clue_overlap"], scores["label_overlap"], errors, replies)


def emer_scores(judge: Judge, items: Sequence[tuple[str, str, str]], *, concurrency: int = 4,
                prompts: dict[str, str] | None = None) -> dict:
    """Score ``(id, reference reasoning, predicted reasoning)`` items; at most ``concurrency`` in flight."""
    prompts = prompts or load_prompts()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(pool.map(lambda it: score_one(judge, prompts, *it), items))
    summary: dict = {"n": len(results), "backend": judge.backend.kind, "model": judge.backend.model}
    for name in SCORES:
        values = [getattr(r, name) for r in results if getattr(r, name) is not None]
        summary[name] = {"mean": float(np.mean(values)) if values else None, "valid": len(values),
                         "invalid": len(results) - len(values)}
    summary["judge_stats"] = judge.stats.as_dict()
    summary["per_sample"] = [{"id": r.id, "clue_overlap": r.clue_overlap, "label_overlap": r.label_overlap,
                              **({"errors": r.errors} if r.errors else {}),
                              **({"invalid_replies": {k: excerpt(v, 300) for k, v in r.invalid_replies.items()}}
                                 if r.invalid_replies else {})} for r in results]
    summary["invalid_example"] = _invalid_example(results)
    return summary


def _invalid_example(results: Sequence[EmerResult]) -> str | None:
    """One invalid judge answer, for messages: ``id step: 'raw reply'`` (or its error when no reply came)."""
    for r in results:
        for step, reply in r.invalid_replies.items():
            return f"{r.id} {step}: {excerpt(reply, 80)!r}"
    for r in results:
        for step, error in r.errors.items():
            return f"{r.id} {step}: {error}"
    return None
