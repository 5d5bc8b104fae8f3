"""One evaluation run: read, pair, parse, score, write ``metrics.json`` / ``report.md`` / plots."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from emollm import config as cfglib
from emollm.dataset.label_sets import load_label_set
from emollm.errors import ConfigError, EvaluationInputError
from emollm.log import get_logger
from eval import classification, io, parsing, proxies, references
from eval.io import load_metrics  # noqa: F401 - its old home; compare and export read runs through it

log = get_logger(__name__)


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("emollm", "numpy", "scikit-learn", "evaluate", "transformers", "torch", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _fold_names(paths: list[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [f"fold{i + 1}" for i in range(len(paths))]


def evaluate_run(cfg: cfglib.EmollmConfig, predictions: list[str | os.PathLike], references_path: str | os.PathLike | None,
                 out_dir: str | os.PathLike, *, plots: bool = True) -> dict:
    """Evaluate prediction file(s) against references; write the run's outputs; return the metrics dict.

    Several prediction files are the folds of a k-fold run (fold = file name); otherwise a ``fold``
    field in the predictions or references splits them. Reference labels are human labels or
    pseudo-labels (``evaluate.reference_source``); each source is scored apart (``by_reference``), the
    headline (``classification``) against human labels when there are any (eval/references.py). Inputs
    that leave nothing to score are an error.
    """
    ecfg = cfg.evaluate
    label_set = load_label_set(cfg.eval_label_set)
    fallback = parsing.check_fallback(label_set, ecfg.fallback_label)
    if not predictions:
        raise EvaluationInputError("no predictions file given")
    preds: list[io.Prediction] = []
    names = _fold_names([str(p) for p in predictions])
    for path, name in zip(predictions, names, strict=True):
        preds += io.read_predictions(path, fold=name if len(predictions) > 1 else None)
    # the language scored: as configured, else the predictions' (their texts), else decided by the references
    pred_language = parsing.dominant_language(p.text for p in preds)
    language = ecfg.language if ecfg.language != "auto" else pred_language
    if references_path is None:
        if len(predictions) > 1:
            raise EvaluationInputError("several prediction files need --references")
        refs = io.read_references(predictions[0], from_predictions=True, score_field=ecfg.score_field)
    else:
        refs = io.read_references(references_path, split=ecfg.split, score_field=ecfg.score_field, language=language)
    paired = io.pair(preds, refs, allow_missing=ecfg.allow_missing)
    if paired.missing_predictions or paired.extra_predictions:
        log.warning("scoring %d common id(s); %d reference id(s) without prediction, %d prediction id(s) "
                    "without reference (--allow-missing)", len(paired.pairs), len(paired.missing_predictions),
                    len(paired.extra_predictions))

    # -- classification: against human labels and pseudo-labels, each source on its own (eval/references.py)
    policy = ecfg.reference_source
    samples: list[dict[str, Any]] = []
    bad_refs = []
    present: Counter[str] = Counter()  # the sources the predicted clips have a reference label from
    answers: dict[tuple[str, str | None], str] = {}  # the raw answer of each row, for an all-invalid error
    for pred, ref in paired.pairs:
        if pred.text is None and pred.label is None:
            continue  # a score-only (regression) prediction: scored below
        row: dict[str, Any] = {"id": pred.id, "fold": pred.fold or ref.fold}
        present.update(references.available(ref.label, ref.source, ref.pseudo_label))
        label, source = references.pick(ref.label, ref.source, ref.pseudo_label, policy)
        if label is not None:
            gold = label_set.normalize(label)
            if gold is None:
                bad_refs.append(f"{ref.id}={label!r}" + (" (pseudo-label)" if source == references.PSEUDO else ""))
            row.update(reference=gold, reference_source=source)
        if pred.label is not None:
            parsed = parsing.normalize_given_label(pred.label, label_set, fallback)
        else:
            parsed = parsing.parse_label(pred.text, label_set, ecfg.parse, fallback)
            row["from_text"] = True
        row.update(predicted=parsed.label, valid=parsed.valid, invalid_reason=parsed.reason)
        answers[(row["id"], row["fold"])] = pred.label if pred.label is not None else pred.text or ""
        samples.append(row)
    if bad_refs:
        raise EvaluationInputError(
            f"{len(bad_refs)} reference label(s) outside the '{label_set.name}' set: {', '.join(bad_refs[:5])}",
            hint=f"labels of the set: {', '.join(label_set.labels)}; choose the set with evaluate.label_set")
    scored = [s for s in samples if s.get("reference")]
    parsed_texts = [s for s in scored if s.get("from_text")]
    if parsed_texts and not any(s["valid"] for s in parsed_texts):
        raise EvaluationInputError(
            f"no label found in any of the {len(parsed_texts)} answer(s) with a reference label "
            f"(evaluate.parse={ecfg.parse}, label set '{label_set.name}', answers' language: "
            f"{pred_language or 'none detected'}); e.g. {_example(parsed_texts[0], answers)}",
            hint="the answers must name an emotion of the set (English or Chinese, synonyms count with "
                 "evaluate.parse=reasoning|synonym); last_word / first_mention / emotion_llama need the exact "
                 f"label ({', '.join(label_set.labels)}); check evaluate.label_set and the predictions' text column")
    if scored and not any(s["valid"] for s in scored):
        # every predicted label is invalid: the scores would only measure the fallback label
        raise EvaluationInputError(
            f"all {len(scored)} predicted label(s) are invalid for the '{label_set.name}' set "
            f"({dict(Counter(s['invalid_reason'] for s in scored))}); e.g. {_example(scored[0], answers)}",
            hint=f"labels of the set: {', '.join(label_set.labels)}; check the predictions' label column "
                 "and evaluate.label_set")
    grouped = references.groups([s["reference_source"] for s in scored], ecfg.combine_sources)
    counts = {s: len(idx) for s, idx in grouped.items() if s != references.ALL}
    result: dict[str, Any] = {
        "kind": "emollm-evaluate", "version": 1, "label_set": label_set.describe(),
        "inputs": {"predictions": [str(p) for p in predictions], "references": str(references_path) if references_path
                   else None, "split": ecfg.split},
        "counts": {"predictions": len(preds), "references": len(refs), "paired": len(paired.pairs),
                   "missing_predictions": len(paired.missing_predictions),
                   "extra_predictions": len(paired.extra_predictions),
                   "missing_prediction_ids": paired.missing_predictions[:20],
                   "extra_prediction_ids": paired.extra_predictions[:20]},
        "language": {"setting": ecfg.language, "scored": language or "en",
                     "predictions": parsing.language_counts(p.text for p in preds if p.text is not None)},
        "references": {"scored_against": references.describe(counts, combined=references.ALL in grouped),
                       "policy": policy, "counts": counts, "headline": references.headline(grouped),
                       "groups": list(grouped), "combined": references.ALL in grouped,
                       "available": {s: present[s] for s in references.SOURCES if present[s]},
                       "without_reference": len(samples) - len(scored)},
    }
    if grouped:
        scores = {source: _score_labels([scored[i] for i in idx], label_set, ecfg, fallback,
                                        check_folds=source == result["references"]["headline"])
                  for source, idx in grouped.items()}
        result.update(scores[result["references"]["headline"]])  # parsing, classification (+ folds): the headline
        if len(grouped) > 1:
            result["by_reference"] = scores
        if result["references"]["headline"] == references.PSEUDO:
            log.warning("no human label: scored against %s", references.name(references.PSEUDO, counts[references.PSEUDO]))
    elif samples:
        log.warning("no prediction has a reference label (%s)", references.nothing_scored_hint(policy, present))

    # -- regression (a `score` per prediction and reference: sentiment on [-3, 3], MOSI-style metrics)
    scored_pairs = [(p, r) for p, r in paired.pairs if p.score is not None]
    if scored_pairs:
        from eval.regression import regression_metrics

        with_reference = [(p, r) for p, r in scored_pairs if r.score is not None]
        if not with_reference:
            raise EvaluationInputError(
                f"{len(scored_pairs)} prediction(s) hold a 'score' but no reference has one",
                hint="give references with a score field (score, gt_score, sentiment), or name it: "
                     "evaluate.score_field=FIELD")
        result["regression"] = regression_metrics([r.score for _, r in with_reference],
                                                  [p.score for p, _ in with_reference])
        result["regression"]["without_reference"] = len(scored_pairs) - len(with_reference)
        for p, r in scored_pairs:
            samples.append({"id": p.id, "fold": p.fold or r.fold, "score": p.score, "reference_score": r.score})

    # -- reasoning (predictions that carry text; a label- or score-only run has no reasoning to score)
    has_text = any(p.text is not None for p, _ in paired.pairs)
    reasoning = [(p, r) for p, r in paired.pairs if has_text and r.reasoning and r.reasoning.strip()]
    if reasoning:
        empty = [p.id for p, _ in reasoning if not (p.text and p.text.strip())]
        refs_text = [r.reasoning for _, r in reasoning]
        pred_text = [p.text or "" for p, _ in reasoning]
        if ecfg.language == "auto":  # the references' language when the predictions did not say
            language = language or parsing.dominant_language(refs_text) or "en"
            result["language"]["scored"] = language
        result["language"]["reference_reasoning"] = parsing.language_counts(refs_text)
        result["reasoning"] = {"n": len(reasoning), "language": language or "en", "empty_predictions": len(empty),
                               "empty_prediction_ids": empty[:20]}
        if len(empty) == len(reasoning):
            raise EvaluationInputError(
                f"no reasoning to score: all {len(reasoning)} prediction(s) paired with a reference reasoning "
                "have an empty text", hint="the predictions' reasoning is read from one of the columns "
                f"{', '.join(io.TEXT_KEYS)}; check the file has the model's answers in one of them")
        if ecfg.proxies:
            result["reasoning"]["proxy_emotion_word_set"] = proxies.emotion_word_set_metrics(refs_text, pred_text)
        if ecfg.embedding_model:
            result["reasoning"]["proxy_embedding_similarity"] = proxies.embedding_similarity(
                refs_text, pred_text, ecfg.embedding_model)
        if ecfg.judge.backend != "none":
            result["reasoning"]["emer"] = _run_judge(cfg, reasoning, Path(out_dir), language or "en")
        ws = result["reasoning"].get("proxy_emotion_word_set")
        if ws is not None and ws["n"] == 0 and ecfg.judge.backend == "none" and not ecfg.embedding_model:
            msg = (f"no reasoning scored: none of the {len(reasoning)} reference reasoning text(s) names an emotion "
                   f"word of the tables (languages {result['language']['reference_reasoning']}), and no judge "
                   "or embedding model is set")
            hint = ("emotion words are read in English and Chinese (emollm/dataset/label_sets/synonyms.yaml, synonyms_zh.yaml); "
                    "check the references' reasoning column (docs/evaluate.md, Inputs), or score with a judge: "
                    "evaluate.judge.backend=openai|hf")
            if not any(k in result for k in ("classification", "regression")):
                raise EvaluationInputError(msg, hint=hint)
            log.warning("%s (%s)", msg, hint)
            result["reasoning"]["warning"] = msg
    if not any(k in result for k in ("classification", "regression", "reasoning")):
        raise EvaluationInputError(
            f"nothing to score: {len(paired.pairs)} paired prediction(s), none with a reference label "
            f"(evaluate.reference_source={policy}), a reference score or reference reasoning",
            hint=references.nothing_scored_hint(policy, present))
    result["versions"] = _versions()
    from eval import report

    report.write_run(result, samples, cfg, Path(out_dir), plots=plots)
    emer_result = (result.get("reasoning") or {}).get("emer")
    if emer_result and emer_result.get("all_invalid"):
        # written first (metrics.json shows each judge error), then a failure: no score came from the judge
        from emollm.errors import JudgeError

        raise JudgeError(
            f"every EMER judge answer was invalid ({emer_result['n']} sample(s), "
            f"{emer_result['judge_stats']['invalid']} invalid answer(s)); e.g. {emer_result['invalid_example']} "
            f"(details: {Path(out_dir) / 'metrics.json'})",
            hint="check evaluate.judge.model answers the prompts in prompts/judge/ with 'Score: N' (1-10); "
                 "after fixing it, rerun with evaluate.judge.retry_invalid=true (invalid replies are cached)")
    return result


def _example(row: dict[str, Any], answers: dict[tuple[str, str | None], str]) -> str:
    return f"{row['id']}: {parsing.excerpt(answers.get((row['id'], row['fold'])))!r}"


def _score_labels(scored: list[dict[str, Any]], label_set: Any, ecfg: Any, fallback: str | None, *,
                  check_folds: bool) -> dict[str, Any]:
    """Parsing stats, classification metrics and (k-fold) per-fold metrics of one reference group."""
    invalid = [s for s in scored if not s["valid"]]
    out: dict[str, Any] = {
        "parsing": {
            "strategy": ecfg.parse, "fallback_label": fallback, "n": len(scored), "invalid": len(invalid),
            "invalid_rate": len(invalid) / len(scored),
            "invalid_by_reason": dict(Counter(s["invalid_reason"] for s in invalid)),
            "invalid_handling": f"mapped to '{fallback}'" if fallback else "counted wrong",
        },
        "classification": classification.classification_metrics(
            [s["reference"] for s in scored], [s["predicted"] for s in scored], label_set.labels),
    }
    # beside the metrics too: with a fallback label, invalid answers can raise UAR / WAR / WAF
    out["classification"]["invalid_rate"] = out["parsing"]["invalid_rate"]
    folds = sorted({s["fold"] for s in scored if s["fold"] is not None})
    if check_folds and ecfg.folds > 1 and len(folds) != ecfg.folds:
        raise ConfigError(f"evaluate.folds={ecfg.folds} but the inputs hold {len(folds)} fold(s) {folds}",
                          hint="pass one predictions file per fold, or a 'fold' field, or set evaluate.folds=1")
    if len(folds) > 1:
        if any(s["fold"] is None for s in scored):
            raise EvaluationInputError("some samples have a fold and others do not")
        per_fold = {f: classification.classification_metrics(
            [s["reference"] for s in scored if s["fold"] == f], [s["predicted"] for s in scored if s["fold"] == f],
            label_set.labels) for f in folds}
        for f, fm in per_fold.items():
            in_fold = [s for s in scored if s["fold"] == f]
            fm["invalid_rate"] = sum(not s["valid"] for s in in_fold) / len(in_fold)
        out["folds"] = {"per_fold": per_fold, "summary": classification.kfold_summary(per_fold)}
    return out


def _run_judge(cfg: cfglib.EmollmConfig, reasoning: list, out_dir: Path, language: str = "en") -> dict:
    from eval import emer, judges

    jcfg = cfg.evaluate.judge
    backend = judges.make_backend(jcfg)
    cache = judges.JudgeCache(jcfg.cache_dir or out_dir / "judge_cache")
    judge = judges.Judge(backend, cache, max_retries=jcfg.max_retries, backoff_s=jcfg.backoff_s,
                         retry_invalid=jcfg.retry_invalid)
    items = [(p.id, r.reasoning, p.text) for p, r in reasoning if p.text and p.text.strip()]
    empty = [p.id for p, r in reasoning if not (p.text and p.text.strip())]
    log.info("EMER judge: %d sample(s) with %s '%s'", len(items), backend.kind, backend.model)
    out = emer.emer_scores(judge, items, concurrency=jcfg.concurrency, prompts=emer.load_prompts(language=language))
    out["language"] = language
    for name in emer.SCORES:  # an empty prediction is an invalid score, not a guessed one
        out[name]["invalid"] += len(empty)
    out["n"] += len(empty)
    out["per_sample"] += [{"id": i, "clue_overlap": None, "label_overlap": None,
                           "errors": {"prediction": "empty prediction text"}} for i in empty]
    for name in emer.SCORES:
        out[name]["invalid_rate"] = out[name]["invalid"] / out["n"] if out["n"] else 0.0
    # no valid score at all (and the judge was asked): the means are all n/a, the run must not pass
    out["all_invalid"] = bool(items) and all(out[name]["valid"] == 0 for name in emer.SCORES)
    if out["judge_stats"]["invalid"]:
        log.warning("EMER judge: %d answer(s) invalid after retries (see metrics.json)", out["judge_stats"]["invalid"])
    return out
