"""``compute_metrics`` for the HF ``Trainer`` / ``Seq2SeqTrainer``.

:func:`make_compute_metrics` returns ``compute_metrics(eval_pred) -> {"war", "uar", "waf", "macro_f1",
"invalid_rate"}`` accepting, in ``EvalPrediction(predictions, label_ids)``:

1. **generated text**: ``predictions`` a list of strings, or a 2-D integer array of generated token ids
   (``predict_with_generate=True``) decoded with ``tokenizer``; ``label_ids`` likewise (strings, or token
   ids with -100 for ignored positions, decoded). Both sides are parsed with the configured strategy;
   a reference that parses to no label is an error.
2. **class ids**: ``predictions`` a 1-D integer array (or 2-D float logits, arg-maxed) of indices into
   the label set's labels, ``label_ids`` a 1-D integer array of the same indices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from emollm.dataset.label_parsing import check_fallback, parse_label
from emollm.dataset.label_sets import LabelSet, load_label_set
from eval.classification import classification_metrics


def _decode(values: Any, tokenizer: Any) -> list[str]:
    if isinstance(values, (list, tuple)) and all(isinstance(v, str) for v in values):
        return list(values)
    arr = np.asarray(values)
    if tokenizer is None:
        raise ValueError("token-id predictions need a tokenizer to decode them")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    arr = np.where(arr < 0, pad, arr)
    return tokenizer.batch_decode(arr.tolist(), skip_special_tokens=True)


def make_compute_metrics(label_set: str | LabelSet = "merr", *, tokenizer: Any = None, parse: str = "last_word",
                         fallback: str | None = "neutral") -> Callable[[Any], dict]:
    labels = label_set if isinstance(label_set, LabelSet) else load_label_set(label_set)
    fb = check_fallback(labels, fallback)

    def compute_metrics(eval_pred: Any) -> dict:
        preds, refs = eval_pred.predictions, eval_pred.label_ids
        if isinstance(preds, tuple) and not isinstance(preds[0], str):
            preds = preds[0]
        arr = None if isinstance(preds, (list, tuple)) and preds and isinstance(preds[0], str) else np.asarray(preds)
        if arr is not None and (arr.ndim == 1 or (arr.ndim == 2 and np.issubdtype(arr.dtype, np.floating))):
            idx = arr if arr.ndim == 1 else arr.argmax(-1)
            y_pred = [labels.labels[int(i)] if 0 <= int(i) < len(labels) else None for i in idx]
            y_true = [labels.labels[int(i)] for i in np.asarray(refs).reshape(-1)]
            invalid = sum(p is None for p in y_pred)
        else:
            parsed = [parse_label(t, labels, parse, fb) for t in _decode(preds, tokenizer)]
            gold = [parse_label(t, labels, parse, None) for t in _decode(refs, tokenizer)]
            bad = [i for i, g in enumerate(gold) if g.label is None]
            if bad:
                raise ValueError(f"{len(bad)} reference text(s) hold no label of '{labels.name}' (rows {bad[:5]})")
            y_pred, y_true = [p.label for p in parsed], [g.label for g in gold]
            invalid = sum(not p.valid for p in parsed)
        m = classification_metrics(y_true, y_pred, labels.labels)
        return {k: m[k] for k in ("war", "uar", "waf", "macro_f1")} | {"invalid_rate": invalid / max(1, len(y_pred))}

    return compute_metrics
