"""Run outputs: ``metrics.json``, ``predictions_parsed.jsonl``, ``report.md``, PNG plots, and a side-by-side
comparison of several runs. Every file is written to a temporary name and renamed into place."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from emollm import config as cfglib
from emollm.dataset.io import atomic_write_bytes, atomic_write_text
from eval import references
from eval.classification import HEADLINE, fmt_pct

LANGUAGE_NAMES = {"en": "English", "zh": "Chinese"}
NAMES = {"war": "WAR (accuracy)", "uar": "UAR", "waf": "WAF (weighted F1)", "macro_f1": "macro F1"}
REGRESSION_NAMES = {"acc2_nonzero": "Acc-2 (non-zero) %", "f1_nonzero": "F1 (non-zero) %", "acc2": "Acc-2 (>= 0) %",
                    "f1": "F1 (>= 0) %", "acc7": "Acc-7 %", "mae": "MAE", "corr": "Corr"}


def _regression_value(key: str, value: float | None) -> str:
    if key in ("mae", "corr"):
        return "n/a" if value is None or value != value else f"{value:.4f}"
    return fmt_pct(value)


def _write(path: Path, text: str) -> None:
    atomic_write_text(path, text, fsync=False)  # a report is rewritten from metrics.json any time: no fsync


def plot_confusion(confusion: dict, path: Path, title: str = "") -> Path:
    """Counts and row-normalised confusion matrices side by side, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols = confusion["labels"], confusion["columns"]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(cols), 1.5 + 0.55 * len(rows)), constrained_layout=True)
    for ax, key, fmt in ((axes[0], "counts", "d"), (axes[1], "row_normalized", ".2f")):
        data = np.asarray(confusion[key], dtype=float)
        top = data.max() if data.size and data.max() > 0 else 1
        ax.imshow(data, cmap="Blues", vmin=0, vmax=top)
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        ax.set_title(f"{title} {key.replace('_', '-')}".strip())
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, format(int(v) if fmt == "d" else v, fmt), ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 * top else "black")  # readable on dark cells
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue(), fsync=False)
    return path


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def _classification_lines(group: dict, title: str, plot: str | None) -> list[str]:
    """One reference group's classification section: parsing, headline metrics, folds, per class, confusion."""
    p, cl = group["parsing"], group["classification"]
    out = [title, "",
           f"Parsing: `{p['strategy']}`; **invalid rate {100 * p['invalid_rate']:.2f}%** ({p['invalid']}/{p['n']}, "
           f"{p['invalid_by_reason'] or 'none'}); invalid answers {p['invalid_handling']}.", ""]
    # every metric a fallback label can raise carries the invalid rate it was computed with
    invalid = f"{fmt_pct(p['invalid_rate'])}% ({p['invalid']}/{p['n']}, {p['invalid_handling']})"
    out += _table(["metric", "%", "invalid answers"], [[NAMES[k], fmt_pct(cl[k]), invalid] for k in HEADLINE]) + [""]
    if "folds" in group:
        pf, s = group["folds"]["per_fold"], group["folds"]["summary"]
        out += ["### Folds", ""] + _table(["fold", "n", *[NAMES[k] for k in HEADLINE], "invalid %"], [
            *[[f, pf[f]["n"], *[fmt_pct(pf[f][k]) for k in HEADLINE], fmt_pct(pf[f].get("invalid_rate"))] for f in pf],
            ["**mean ± std**", "", *[f"{fmt_pct(s[k]['mean'])} ± {fmt_pct(s[k]['std'])}" for k in HEADLINE],
             fmt_pct(p["invalid_rate"])],
        ]) + [""]
    out += ["### Per class", ""] + _table(["label", "precision", "recall", "F1", "support"], [
        [lab, fmt_pct(v["precision"]), fmt_pct(v["recall"]), fmt_pct(v["f1"]), v["support"]]
        for lab, v in cl["per_class"].items()]) + [""]
    cf = cl["confusion"]
    out += ["### Confusion matrix (counts; rows = reference)", ""] + _table(
        ["", *cf["columns"]], [[lab, *row] for lab, row in zip(cf["labels"], cf["counts"], strict=True)]) + [""]
    if plot:
        out += [f"![confusion]({plot})", ""]
    return out


def render_markdown(m: dict) -> str:
    out = ["# emollm evaluation report", ""]
    c = m["counts"]
    out += [f"Label set: **{m['label_set']['name']}** ({', '.join(m['label_set']['labels'])})"
            + (f" from `{m['label_set']['path']}`" if m["label_set"].get("path") else "") + ". "
            f"Predictions: {c['predictions']}, references: {c['references']}, scored (paired): {c['paired']}.", ""]
    if c["missing_predictions"] or c["extra_predictions"]:
        out += [f"**Missing ids** (--allow-missing): {c['missing_predictions']} reference id(s) without prediction, "
                f"{c['extra_predictions']} prediction id(s) without reference; not scored.", ""]
    lang = m.get("language")
    if lang:
        out += [f"Language scored: **{LANGUAGE_NAMES.get(lang['scored'], lang['scored'])}** (evaluate.language="
                f"{lang['setting']}); predictions by language: {lang.get('predictions') or 'none'}"
                + (f"; reference reasoning by language: {lang['reference_reasoning']}"
                   if lang.get("reference_reasoning") else "") + ".", ""]
    refs = m.get("references")
    if refs:
        out += [f"**References: {refs['scored_against']}** (evaluate.reference_source={refs['policy']})"
                + (f"; {refs['without_reference']} prediction(s) without a reference label, not scored"
                   if refs.get("without_reference") else "") + ".", ""]
        if refs.get("headline") == references.PSEUDO:
            out += ["**These scores measure agreement with the dataset builder's pseudo-labels, not accuracy "
                    "against human labels.**", ""]
    if "classification" in m:
        head = (refs or {}).get("headline")
        groups = m.get("by_reference") or {head: m}
        for source, group in groups.items():
            title = "## Classification" + (f": against {references.name(source, group['classification']['n'])}"
                                           if source else "")
            plot = next((f for f in m.get("plots", []) if f == ("confusion.png" if source == head
                                                              else f"confusion_{source}.png")), None)
            out += _classification_lines(group, title, plot)
    rg = m.get("regression")
    if rg:
        out += ["## Regression (scores)", "", f"{rg['n']} sample(s) with a predicted and a reference score"
                + (f"; {rg['without_reference']} prediction(s) without a reference score (not scored)"
                   if rg.get("without_reference") else "") + ".", ""]
        out += _table(["metric", "value"], [[REGRESSION_NAMES[k], _regression_value(k, rg[k])]
                                            for k in REGRESSION_NAMES]) + [""]
    r = m.get("reasoning")
    if r:
        out += ["## Reasoning", "", f"{r['n']} sample(s) with reference reasoning, scored in "
                f"{LANGUAGE_NAMES.get(r.get('language', 'en'), r.get('language'))}; "
                f"{r['empty_predictions']} empty prediction(s).", ""]
        if r.get("warning"):
            out += [f"**Warning:** {r['warning']}.", ""]
        if "emer" in r:
            e = r["emer"]
            out += [f"### EMER (judge: {e['backend']} `{e['model']}`, scores 1-10)", ""] + _table(
                ["score", "mean", "valid", "invalid", "invalid %"],
                [[k, "n/a" if e[k]["mean"] is None else f"{e[k]['mean']:.2f}", e[k]["valid"], e[k]["invalid"],
                  fmt_pct(e[k].get("invalid_rate"))]
                 for k in ("clue_overlap", "label_overlap")]) + ["", f"Judge calls: {e['judge_stats']}", ""]
            if e.get("all_invalid"):
                out += [f"**Every judge answer was invalid: no EMER score.** E.g. {e.get('invalid_example')}.", ""]
        ws = r.get("proxy_emotion_word_set")
        if ws:
            out += ["### PROXY: emotion-word set metrics (offline proxy, not an EMER score)", ""] + _table(
                ["precision", "recall", "F1", "hit rate", "n", "skipped (no reference emotion)"],
                [[fmt_pct(ws["precision"]), fmt_pct(ws["recall"]), fmt_pct(ws["f1"]), fmt_pct(ws["hit_rate"]),
                  ws["n"], ws["skipped_no_reference_emotion"]]]) + [""]
        es = r.get("proxy_embedding_similarity")
        if es:
            out += ["### PROXY: embedding similarity (offline proxy, not an EMER score)", "",
                    f"mean cosine {es['mean_cosine']:.4f} over {es['n']} sample(s), model `{es['model']}`", ""]
    out += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()), ""]
    return "\n".join(out)


def write_run(m: dict, samples: list[dict], cfg: cfglib.EmollmConfig, out: Path, *, plots: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = cfglib.save_resolved(cfg, out, command="evaluate")
    m["config_file"] = cfg_path.name
    m["config"] = cfglib.to_dict(cfg)
    m["plots"] = []
    if plots and "classification" in m:
        head = (m.get("references") or {}).get("headline")
        title = references.NAMES[head] if head and m.get("by_reference") else ""
        m["plots"].append(plot_confusion(m["classification"]["confusion"], out / "confusion.png", title).name)
        for fold, fm in m.get("folds", {}).get("per_fold", {}).items():
            m["plots"].append(plot_confusion(fm["confusion"], out / f"confusion_{fold}.png", fold).name)
        for source, group in (m.get("by_reference") or {}).items():
            if source != head:
                m["plots"].append(plot_confusion(group["classification"]["confusion"], out / f"confusion_{source}.png",
                                                 references.NAMES[source]).name)
    _write(out / "predictions_parsed.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    _write(out / "metrics.json", json.dumps(m, indent=2, ensure_ascii=False, default=str))
    _write(out / "report.md", render_markdown(m))


def _headline(m: dict) -> dict[str, str]:
    row: dict[str, str] = {}
    cl = m.get("classification")
    if cl:
        refs = m.get("references")
        row["references"] = (references.name(refs["headline"]) if refs and refs.get("headline")
                             else "given (Emotion-LLaMA's file)" if m.get("source") else "not recorded")
        s = m.get("folds", {}).get("summary")
        for k in HEADLINE:
            row[NAMES[k]] = (f"{fmt_pct(s[k]['mean'])} ± {fmt_pct(s[k]['std'])}" if s else fmt_pct(cl[k]))
        row["invalid rate %"] = fmt_pct(m["parsing"]["invalid_rate"])
    rg = m.get("regression")
    if rg:
        for k in ("acc2_nonzero", "f1_nonzero", "acc7", "mae", "corr"):
            row[REGRESSION_NAMES[k]] = _regression_value(k, rg.get(k))
    r = m.get("reasoning") or {}
    for k in ("clue_overlap", "label_overlap"):
        if "emer" in r and r["emer"][k]["mean"] is not None:
            row[f"EMER {k}"] = f"{r['emer'][k]['mean']:.2f} ({r['emer'][k]['invalid']}/{r['emer']['n']} invalid)"
    if r.get("proxy_emotion_word_set", {}).get("f1") is not None:
        row["PROXY word-set F1 %"] = fmt_pct(r["proxy_emotion_word_set"]["f1"])
    if r.get("proxy_embedding_similarity"):
        row["PROXY embedding cos"] = f"{r['proxy_embedding_similarity']['mean_cosine']:.4f}"
    return row


def compare_runs(paths: Sequence[str | os.PathLike], out: Path | None = None, names: Sequence[str] | None = None) -> str:
    """Several runs' metrics.json side by side; a markdown table (written to ``out/compare.md`` when given)."""
    from eval.io import load_metrics

    runs = [load_metrics(p) for p in paths]
    names = list(names) if names else [
        Path(p).stem if Path(p).suffix.lower() == ".txt" else Path(p).parent.name if Path(p).is_file() else Path(p).name
        for p in paths
    ]
    rows = [_headline(m) for m in runs]
    keys = [k for row in rows for k in row]
    keys = list(dict.fromkeys(keys))
    md = ["# emollm evaluation: runs compared", ""] + _table(
        ["metric", *names], [[k, *[row.get(k, "—") for row in rows]] for k in keys])
    sets = {m["label_set"]["name"] for m in runs}
    if len(sets) > 1:
        md += ["", f"**Warning:** the runs use different label sets ({', '.join(sorted(sets))})."]
    against = {row["references"] for row in rows if "references" in row}
    if len(against) > 1:
        md += ["", f"**Warning:** the runs are scored against different references ({', '.join(sorted(against))})."]
    text = "\n".join(md) + "\n"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write(out / "compare.md", text)
        _write(out / "compare.json", json.dumps({"runs": dict(zip(names, [str(p) for p in paths], strict=True)),
                                                  "headline": dict(zip(names, rows, strict=True))}, indent=2))
    return text
