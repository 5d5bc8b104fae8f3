"""Offline reasoning PROXIES (no judge): they approximate, and are never reported as, EMER scores.

- :func:`emotion_word_set_metrics` (AffectGPT-style set metrics): the emotion words of the reference
  and the predicted reasoning, each mapped to its canonical emotion through ``synonyms.yaml``; per sample
  set precision / recall / F1, averaged; *hit rate* = share of samples whose predicted set meets the
  reference set. Samples whose reference names no emotion word are skipped and counted. English and
  Chinese are read alike (``synonyms_zh.yaml``; Chinese matched longest-entry-first, no word boundaries);
  a negated emotion ("not happy", 没有生气, 并不开心) is not counted (emollm/dataset/label_parsing.py).
- :func:`embedding_similarity`: cosine similarity of mean-pooled hidden states of a local
  sentence-embedding model (transformers ``AutoModel`` by path), averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from emollm.dataset.label_parsing import language_counts, mentions
from emollm.errors import EvaluationInputError

PROXY_NOTE = "proxy metric (offline approximation), not an EMER judge score"


def emotion_words(text: str | None) -> set[str]:
    """Canonical emotions ``text`` asserts (words and two-word phrases of the synonym tables, any
    language; negated ones left out)."""
    if not text:
        return set()
    return {m.value for m in mentions(text) if not m.negated}


def emotion_word_set_metrics(references: Sequence[str | None], predictions: Sequence[str | None]) -> dict:
    p_list, r_list, f_list, hits, skipped = [], [], [], 0, 0
    for ref, pred in zip(references, predictions, strict=True):
        gold, got = emotion_words(ref), emotion_words(pred)
        if not gold:
            skipped += 1
            continue
        inter = len(gold & got)
        p = inter / len(got) if got else 0.0
        r = inter / len(gold)
        p_list.append(p)
        r_list.append(r)
        f_list.append(2 * p * r / (p + r) if p + r else 0.0)
        hits += inter > 0
    n = len(f_list)

    def mean(xs: list[float]) -> float | None:
        return float(np.mean(xs)) if xs else None

    return {"kind": "proxy", "note": PROXY_NOTE, "n": n, "skipped_no_reference_emotion": skipped,
            "languages": {"references": language_counts(references), "predictions": language_counts(predictions)},
            "precision": mean(p_list), "recall": mean(r_list), "f1": mean(f_list),
            "hit_rate": hits / n if n else None}


def embedding_similarity(references: Sequence[str], predictions: Sequence[str], model_path: str | Path,
                         *, batch_size: int = 16, max_length: int = 256) -> dict:
    """Mean cosine similarity of mean-pooled embeddings (a local model by path; nothing is downloaded)."""
    if not Path(model_path).exists():
        raise EvaluationInputError(f"embedding model path '{model_path}' does not exist",
                                   hint="evaluate.embedding_model takes a local sentence-embedding model folder")
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model = AutoModel.from_pretrained(model_path).eval()

    def embed(texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = tok([t or "" for t in texts[i:i + batch_size]], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1))

    a, b = embed(list(references)), embed(list(predictions))
    norm = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    sims = (a * b).sum(1) / np.where(norm > 0, norm, 1.0)
    return {"kind": "proxy", "note": PROXY_NOTE, "model": str(model_path), "n": len(sims),
            "mean_cosine": float(sims.mean()) if len(sims) else None, "per_sample": [round(float(s), 6) for s in sims]}
