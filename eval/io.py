"""Reading predictions and references; pairing them by id.

Predictions: JSONL (one object per line), a JSON list, or CSV/TSV, with ``id`` and ``text`` and/or
``label`` and/or a regression ``score`` (optional ``fold``). References: the same formats with ``id``,
``label`` and/or ``reasoning`` and/or ``score`` (optional ``fold``), or a built dataset (a folder
holding ``annotations.jsonl``, or that file; ``split=`` keeps the records of one split).

Emotion-LLaMA's files are read as-is: the EMER CSV its ``eval_emotion_EMER.py`` writes (columns
``names``, ``chi_reasons``) as predictions, and the result summary its ``eval_emotion.py`` prints
(``Accuracy:`` / ``Precision:`` / ``Recall:`` / ``F1 Score:`` + the confusion matrix) as a run for
``--compare`` (:func:`read_emotion_llama_result`). AffectGPT's EMER files too: v1 ``gt-eng.csv`` /
``gt-chi.csv`` (``names``, ``emotions``, ``subtitles``, ``reasons``) and v2 ``final-EMER-reason.csv``
(``names`` or ``name``, ``chinese``, ``english``: the column of the scored language is taken,
:func:`read_references` ``language``). Other column aliases: ``name`` / ``video_name`` for the id,
``answer`` / ``pred`` / ``output`` / ``reasons`` for the text, ``gt`` / ``emotion`` / ``emotions`` for the
reference label, ``reason`` / ``reasons`` / ``gt_reason`` for the reference reasoning. A predictions file
that also holds reference fields (``gt``...) serves as its own references when none are given. A file
none of whose columns is known fails naming the columns it has.

A reference label says where it comes from in ``gt_source`` (``label``: a person's; ``pseudo_label``: the
dataset builder's); without it, it is taken as a person's. A built dataset's record gives both its
``label`` (human) and its ``pseudo_label``; ``evaluate.reference_source`` picks (eval/references.py).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from emollm.errors import EvaluationInputError
from eval.references import source_of

ID_KEYS = ("id", "clip_id", "sample_id", "name", "names", "video_name", "video", "clip")
TEXT_KEYS = ("text", "answer", "prediction", "pred", "output", "response", "generated", "chi_reasons", "reasons",
             "eng_reasons")
PRED_LABEL_KEYS = ("label", "pred_label", "predicted_label")
REF_LABEL_KEYS = ("label", "gt", "gt_label", "ground_truth", "true_label", "emotion", "emotions")
REF_LABEL_KEYS_IN_PREDICTIONS = ("gt", "gt_label", "ground_truth", "true_label")
REF_SOURCE_KEYS = ("gt_source", "label_source", "reference_source")  # label | pseudo_label (none: a person's label)
REASONING_KEYS = ("reasoning", "reason", "reasons", "gt_reason", "description")
# reasoning columns per language (AffectGPT's final-EMER-reason.csv has both): the scored language's first
REASONING_KEYS_BY_LANGUAGE = {"en": ("english", "eng_reasons", "chinese", "chi_reasons"),
                              "zh": ("chinese", "chi_reasons", "english", "eng_reasons")}
PRED_SCORE_KEYS = ("score", "pred_score", "predicted_score")  # regression (sentiment on [-3, 3], ...)
REF_SCORE_KEYS = ("score", "gt_score", "sentiment", "sentiment_score")


ALIASES_HINT = "the column names read are listed in docs/evaluate.md (Inputs); rename the columns to one of them"


@dataclass
class Prediction:
    id: str
    text: str | None = None
    label: str | None = None
    fold: str | None = None
    score: float | None = None  # regression prediction


@dataclass
class Reference:
    id: str
    label: str | None = None
    reasoning: str | None = None
    fold: str | None = None
    score: float | None = None  # regression reference
    source: str = "label"  # where ``label`` comes from: "label" (a person's) | "pseudo_label" (eval/references.py)
    pseudo_label: str | None = None  # a built dataset record's pseudo-label (the builder's, not ground truth)


@dataclass
class Paired:
    pairs: list[tuple[Prediction, Reference]]
    missing_predictions: list[str] = field(default_factory=list)  # reference ids without a prediction
    extra_predictions: list[str] = field(default_factory=list)  # prediction ids without a reference


def read_records(path: str | Path) -> list[dict]:
    """Rows of a JSONL / JSON / CSV / TSV file (or a dataset folder's annotations.jsonl)."""
    p = Path(path)
    if p.is_dir():
        p = p / "annotations.jsonl"
    if not p.is_file():
        raise EvaluationInputError(f"{p}: no such file")
    text = p.read_text(encoding="utf-8-sig")
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return [dict(r) for r in csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")]
        if suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):  # {id: record} or {"results": [...]}
                lists = [v for v in data.values() if isinstance(v, list)]
                data = lists[0] if len(data) == 1 and lists else [{"id": k, **v} if isinstance(v, dict)
                                                                    else {"id": k, "text": v} for k, v in data.items()]
            rows = data
        else:
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise EvaluationInputError(f"{p}:{n}: not a JSON line ({exc.msg})") from None
    except json.JSONDecodeError as exc:
        raise EvaluationInputError(f"{p}: not valid JSON ({exc.msg})") from None
    except csv.Error as exc:
        raise EvaluationInputError(f"{p}: not valid CSV ({exc})") from None
    if not all(isinstance(r, dict) for r in rows):
        raise EvaluationInputError(f"{p}: every record must be an object with named fields")
    return rows


def _get(row: dict, keys: Iterable[str]) -> str | None:
    for key in keys:
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and value != value):
            return str(value) if not isinstance(value, str) else value
    return None


def columns(rows: list[dict]) -> str:
    """The columns a file has, for error messages."""
    seen = list(dict.fromkeys(str(k) for row in rows[:50] for k in row))
    return ", ".join(seen[:20]) + (" ..." if len(seen) > 20 else "") if seen else "none"


def _ids(rows: list[dict], path: str | Path) -> list[str]:
    ids = []
    for n, row in enumerate(rows, 1):
        value = _get(row, ID_KEYS)
        if value is None or not value.strip():
            raise EvaluationInputError(f"{path}: record {n} has no id (one of: {', '.join(ID_KEYS)}); "
                                       f"columns seen: {columns(rows)}", hint=ALIASES_HINT)
        ids.append(value.strip())
    dup = sorted(i for i, c in Counter(ids).items() if c > 1)
    if dup:
        raise EvaluationInputError(f"{path}: duplicate ids: {', '.join(dup[:5])}" + (" ..." if len(dup) > 5 else ""))
    return ids


def _score(row: dict, keys: Iterable[str], path: str | Path, id_: str) -> float | None:
    """The first of ``keys`` holding a number (a CSV cell "" is no score); anything else is an error."""
    raw = _get(row, keys)
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise EvaluationInputError(f"{path}: '{id_}' has a score that is not a number: {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise EvaluationInputError(f"{path}: '{id_}' has a non-finite score {raw!r}")
    return value


def read_predictions(path: str | Path, fold: str | None = None) -> list[Prediction]:
    rows = read_records(path)
    out = []
    for id_, row in zip(_ids(rows, path), rows, strict=True):
        text, label = _get(row, TEXT_KEYS), _get(row, PRED_LABEL_KEYS)
        score = _score(row, PRED_SCORE_KEYS, path, id_)
        if (text is None and label is None and score is None
                and not any(k in row for k in (*TEXT_KEYS, *PRED_LABEL_KEYS))):
            raise EvaluationInputError(
                f"{path}: prediction '{id_}' has neither a text ({', '.join(TEXT_KEYS)}) nor a label "
                f"({', '.join(PRED_LABEL_KEYS)}) nor a score; columns seen: {columns(rows)}", hint=ALIASES_HINT)
        row_fold = _get(row, ("fold",))
        out.append(Prediction(id_, text, label, fold if fold is not None else row_fold, score))
    return out


def read_references(path: str | Path, *, from_predictions: bool = False, split: str | None = None,
                    score_field: str | None = None, language: str | None = None) -> list[Reference]:
    """References by id. ``split``: only rows whose ``split`` field is that (a built dataset's records);
    ``score_field``: the field holding a regression reference (default: ``REF_SCORE_KEYS``); ``language``
    (``en`` | ``zh``; None: English first): which of a file's per-language reasoning columns is read."""
    rows = read_records(path)
    reasoning_keys = REASONING_KEYS + REASONING_KEYS_BY_LANGUAGE.get(language or "en", REASONING_KEYS_BY_LANGUAGE["en"])
    if not from_predictions and rows:
        known = {*REF_LABEL_KEYS, *reasoning_keys, *REF_SCORE_KEYS, *((score_field,) if score_field else ())}
        if not any(k in row for row in rows for k in known):
            raise EvaluationInputError(
                f"{path}: no reference column: none of label ({', '.join(REF_LABEL_KEYS)}), reasoning "
                f"({', '.join(reasoning_keys)}) or score ({', '.join(REF_SCORE_KEYS)}); columns seen: {columns(rows)}",
                hint=ALIASES_HINT)
    if split is not None:
        kept = [row for row in rows if str(row.get("split")) == split]
        if not kept:
            found = sorted({str(row.get("split")) for row in rows})
            raise EvaluationInputError(f"{path}: no reference in split '{split}' (splits: {', '.join(found)})",
                                       hint="set evaluate.split to one of them, or null for every record")
        rows = kept
    label_keys = REF_LABEL_KEYS_IN_PREDICTIONS if from_predictions else REF_LABEL_KEYS
    score_keys = (score_field,) if score_field else (("gt_score",) if from_predictions else REF_SCORE_KEYS)
    refs = [
        Reference(id_, _get(row, label_keys), _get(row, reasoning_keys) if not from_predictions
                  else _get(row, ("gt_reason", "reference_reasoning")), _get(row, ("fold",)),
                  _score(row, score_keys, path, id_),
                  source_of(_get(row, REF_SOURCE_KEYS), f"{path}: '{id_}': "),
                  None if from_predictions else _get(row, ("pseudo_label",)))
        for id_, row in zip(_ids(rows, path), rows, strict=True)
    ]
    if from_predictions and not any(r.label or r.reasoning or r.score is not None for r in refs):
        raise EvaluationInputError(f"{path}: no references given and the predictions hold no 'gt' field",
                                   hint="pass --references FILE (CSV/JSONL with id,label,reasoning or a dataset dir)")
    return refs


def pair(predictions: list[Prediction], references: list[Reference], *, allow_missing: bool = False) -> Paired:
    """Pair by id. Ids on one side only are an error naming a few, unless ``allow_missing``."""
    by_id = {r.id: r for r in references}
    pred_ids = {p.id for p in predictions}
    dup = sorted(i for i, c in Counter(p.id for p in predictions).items() if c > 1)
    if dup:
        raise EvaluationInputError(f"predictions: duplicate ids across files: {', '.join(dup[:5])}")
    missing = sorted(set(by_id) - pred_ids)
    extra = sorted(pred_ids - set(by_id))
    if (missing or extra) and not allow_missing:
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference id(s) have no prediction (e.g. {', '.join(missing[:5])})")
        if extra:
            parts.append(f"{len(extra)} prediction id(s) have no reference (e.g. {', '.join(extra[:5])})")
        raise EvaluationInputError("; ".join(parts), hint="fix the ids, or pass --allow-missing to score the "
                                   "common ids only (the report counts the rest)")
    pairs = [(p, by_id[p.id]) for p in predictions if p.id in by_id]
    if not pairs:
        raise EvaluationInputError("predictions and references share no id")
    return Paired(pairs, missing, extra)


_RESULT_LINE = re.compile(r"^(Accuracy|Precision|Recall|F1 Score):\s*([0-9.eE+-]+)\s*$")


def read_emotion_llama_result(path: str | Path) -> dict:
    """Emotion-LLaMA's printed result (``Accuracy: …``, ``Precision: …``, ``Recall: …``, ``F1 Score: …``,
    then the confusion matrix ``[[…]]``) as a metrics dict that ``--compare`` can put beside our runs.

    Its precision / recall / F1 are sklearn's weighted averages, so ``F1 Score`` is WAF; UAR and
    macro F1 are recomputed from the confusion matrix (rows = references, sklearn's sorted label order,
    whose names the file does not keep).
    """
    import numpy as np

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvaluationInputError(f"{p}: cannot read ({exc.strerror or exc})") from None
    values = {}
    for line in text.splitlines():
        match = _RESULT_LINE.match(line.strip())
        if match:
            values[match.group(1)] = float(match.group(2))
    if "Accuracy" not in values or "F1 Score" not in values:
        raise EvaluationInputError(f"{p}: not an Emotion-LLaMA result file (no 'Accuracy:' / 'F1 Score:' lines)")
    rows = re.findall(r"\[([0-9\s]+)\]", text[text.find("[["):] if "[[" in text else "")
    classification = {"n": None, "war": values["Accuracy"], "waf": values["F1 Score"], "uar": None, "macro_f1": None}
    if rows:
        cm = np.array([[int(v) for v in row.split()] for row in rows], dtype=float)
        if cm.ndim == 2 and cm.shape[0] == cm.shape[1]:
            support, predicted, hits = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
            recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
            precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
            f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(hits),
                           where=(precision + recall) > 0)
            classification.update(n=int(cm.sum()), uar=float(recall[support > 0].mean()), macro_f1=float(f1.mean()))
    return {
        "kind": "emollm-evaluate",
        "source": f"Emotion-LLaMA result file {p.name}",
        "label_set": {"name": f"emotion-llama ({len(rows)} classes)" if rows else "emotion-llama", "labels": []},
        "classification": classification,
        "parsing": {"invalid_rate": None, "strategy": "emotion_llama"},
    }


def load_metrics(path: str | os.PathLike) -> dict:
    """A run's metrics.json (or its folder), or an Emotion-LLaMA result .txt (read as-is)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    if p.suffix.lower() == ".txt":
        return read_emotion_llama_result(p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvaluationInputError(f"{p}: no such file") from None
    except json.JSONDecodeError as exc:
        raise EvaluationInputError(f"{p}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("kind") != "emollm-evaluate":
        raise EvaluationInputError(f"{p}: not an emollm evaluate metrics.json")
    return data
