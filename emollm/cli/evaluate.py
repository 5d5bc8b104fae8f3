"""``emollm evaluate``: UAR / WAR / WAF from predictions, EMER reasoning scores, proxies, reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emollm import config as cfglib
from emollm.errors import EmollmError
from emollm.log import get_logger

NAME = "evaluate"
HELP = "score predictions: UAR / WAR / weighted F1, EMER clue / label overlap, proxies; write a report"
DESCRIPTION = """\
Pair predictions (JSONL/CSV: id, text and/or label) with references (CSV/JSONL: id, label, reasoning,
or a built dataset folder), parse labels from the text, and write metrics.json, report.md and
confusion PNGs to --out. Several --predictions files are the folds of a k-fold run. Settings come
from the config's `evaluate` section (see `emollm config keys`).

  emollm evaluate --predictions preds.jsonl --references test.csv --out runs/eval evaluate.label_set=dfew
  emollm evaluate --predictions f1.jsonl f2.jsonl --references dfew.csv --out runs/dfew evaluate.folds=2
  emollm evaluate --predictions p.jsonl --references r.csv --out runs/emer \\
      evaluate.judge.backend=openai evaluate.judge.base_url=http://127.0.0.1:8000/v1 evaluate.judge.model=qwen
  emollm evaluate --compare runs/a/metrics.json runs/b/metrics.json --out runs/compare

Reference labels are human labels or the dataset builder's pseudo-labels (evaluate.reference_source:
auto | label | pseudo_label); every report says which, and scores each source on its own
(evaluate.combine_sources=true adds both pooled). Inputs that leave nothing to score fail.
"""

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import add_config_arguments

    parser.add_argument("--predictions", nargs="+", metavar="FILE", help="predictions JSONL/JSON/CSV (one per fold)")
    parser.add_argument("--references", metavar="FILE", default=None,
                        help="references CSV/JSONL or a dataset folder (default: 'gt' fields of the predictions)")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default: run.output_dir)")
    parser.add_argument("--label-set", default=None, metavar="NAME|FILE.yaml",
                        help="shortcut for evaluate.label_set: a shipped set or a label-set YAML file")
    parser.add_argument("--language", choices=("auto", "en", "zh"), default=None,
                        help="shortcut for evaluate.language: the texts' language (judge prompts, reasoning column; "
                             "auto: detected)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score the common ids when some are on one side only (counted in the report)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--compare", nargs="+", metavar="METRICS", default=None,
                        help="instead of scoring: put these runs' metrics.json side by side (compare.md)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from eval import references, report, runner

    if args.compare:
        text = report.compare_runs(args.compare, Path(args.out) if args.out else None)
        sys.stdout.write(text)
        return 0
    if not args.predictions:
        raise EmollmError("no predictions given", hint="emollm evaluate --predictions FILE --references FILE --out DIR")
    overrides = list(args.overrides)
    if args.label_set:
        overrides.append(f"evaluate.label_set={args.label_set}")
    if args.allow_missing:
        overrides.append("evaluate.allow_missing=true")
    if getattr(args, "language", None):
        overrides.append(f"evaluate.language={args.language}")
    cfg = cfglib.load(args.config, overrides)
    out = Path(args.out or cfg.run.output_dir)
    m = runner.evaluate_run(cfg, args.predictions, args.references, out, plots=not args.no_plots)
    lines = [f"wrote {out / 'metrics.json'}, {out / 'report.md'}"]
    refs = m["references"]
    if "classification" in m or refs["available"]:
        lines.append(f"references: {refs['scored_against']}"
                     + (f"; {refs['without_reference']} prediction(s) without one (not scored)"
                        if refs["without_reference"] else ""))
    for source, group in (m.get("by_reference") or ({refs["headline"]: m} if "classification" in m else {})).items():
        c, p = group["classification"], group["parsing"]
        lines.append(f"{m['label_set']['name']} vs {references.NAMES[source]}: n={c['n']} WAR={100 * c['war']:.2f} "
                     f"UAR={100 * c['uar']:.2f} WAF={100 * c['waf']:.2f} macroF1={100 * c['macro_f1']:.2f} "
                     f"(invalid answers {100 * p['invalid_rate']:.2f}%, {p['invalid_handling']})")
        if "folds" in group:
            s = group["folds"]["summary"]
            lines.append(f"  {len(s['folds'])} folds: UAR={100 * s['uar']['mean']:.2f}±{100 * s['uar']['std']:.2f} "
                         f"WAR={100 * s['war']['mean']:.2f}±{100 * s['war']['std']:.2f} "
                         f"(invalid answers {100 * p['invalid_rate']:.2f}%)")
    if refs["headline"] == references.PSEUDO:
        lines.append("note: pseudo-labels are the dataset builder's, not human ground truth: these scores measure "
                     "agreement with the builder")
    if "regression" in m:
        r = m["regression"]
        lines.append("regression: " + " ".join(f"{k}={r[k]:.4f}" for k in ("acc7", "acc2", "f1", "mae", "corr")
                                               if isinstance(r.get(k), (int, float))) + f" n={r.get('n')}")
    e = (m.get("reasoning") or {}).get("emer")
    if e:
        lines.append("EMER: " + ", ".join(
            f"{k}={'n/a' if e[k]['mean'] is None else round(e[k]['mean'], 2)} "
            f"({e[k]['invalid']}/{e['n']} invalid, {100 * e[k].get('invalid_rate', 0):.2f}%)"
            for k in ("clue_overlap", "label_overlap")) + f"; judge calls {e['judge_stats']['calls']}")
    print("\n".join(lines))
    return 0
