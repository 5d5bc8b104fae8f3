"""``emollm baseline train|predict``: the non-LLM classifiers (HLM12ERC, TelME, DMD) on a built dataset's
feature cache, scored by ``emollm evaluate`` beside the LLM runs."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from emollm import config as cfglib
from emollm.errors import ConfigError

NAME = "baseline"
HELP = "train / run a non-LLM baseline (hlm12erc, telme, dmd) on the same dataset and feature cache"
DESCRIPTION = """\
The seed papers' classifiers as baselines: they read the pooled features of the feature cache that
`emollm features` wrote for the LLM (one vector per clip and modality of model.encoders), train per the
config's `baseline` section (epochs, lr, batch_size, options, ... see `emollm config keys | grep baseline`)
and write a run dir (model.safetensors, baseline.json, config.yaml, train_log.jsonl, checkpoint-<epoch>/).
Predictions are JSONL that `emollm evaluate` scores; `emollm evaluate --compare` puts the baseline's
metrics.json beside an LLM run's. See docs/baselines.md.

`emollm baseline train --help` and `emollm baseline predict --help` describe each action.

  emollm baseline train --method hlm12erc --config tiny_cpu data/meld evaluate.label_set=meld
  emollm baseline train --method telme --config run.yaml data/meld --out runs/telme baseline.epochs=10
  emollm baseline train --method hlm12erc --config run.yaml data/meld --out runs/h --resume
  emollm baseline train --method hlm12erc --config run.yaml data/meld --out runs/h \\
      baseline.options="{fusion: attention, losses: {ce: 1, dice: 0.5}, triplet_weight: 0.1}"
  emollm baseline predict --model runs/h data/meld --out runs/h/preds.jsonl
  emollm evaluate --predictions runs/h/preds.jsonl --out runs/h/eval evaluate.label_set=meld
  emollm evaluate --compare runs/h/eval/metrics.json runs/llm/eval/metrics.json
"""


TRAIN_DESCRIPTION = """\
Train a baseline on DATASET_DIR's train split (data.train_split) from its feature cache
(features.cache_dir, default DATASET_DIR/features); the eval split (data.eval_split) is scored after
epochs (baseline.eval_every). Multi-stage methods (TelME: teacher, students, fusion) train stage after
stage (baseline.epochs: one number for every stage, or {stage: epochs}). Checkpoints go to
OUT/checkpoint-<epoch>; --resume continues from the newest one and ends with the same weights as an
uninterrupted run.

  emollm baseline train --method hlm12erc --config run.yaml data/meld --out runs/h evaluate.label_set=meld \\
      baseline.options="{fusion: attention, losses: {ce: 1, dice: 0.5}, triplet_weight: 0.1}"
"""

PREDICT_DESCRIPTION = """\
Predict the clips of DATASET_DIR with a trained baseline run dir: JSONL rows {"id", "label", "probs"}
(classification) or {"id", "score"} (regression), which `emollm evaluate --predictions` reads. Each row
carries the clip's reference like `emollm predict`'s (gt + gt_source: its human label, else its
pseudo-label; gt_score for regression), so evaluate needs no --references. Features
come from the dataset's feature cache as the run's config.yaml says (override with key=value, e.g.
features.cache_dir=...); they must come from the encoders the model was trained on.

  emollm baseline predict --model runs/h data/meld --out preds.jsonl              # the eval split
  emollm baseline predict --model runs/h data/other --out preds.jsonl --split all
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import HelpFormatter, add_config_arguments

    device_help = "torch device for training / predicting: auto, cpu, cuda, cuda:1 (shortcut for baseline.device)"
    parser.add_argument("--device", default=None, help=device_help + "; default: the config's")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", title="actions")
    sub.required = True
    train = sub.add_parser("train", help="train a baseline (checkpoints, resume, eval metrics per epoch)",
                           description=TRAIN_DESCRIPTION, formatter_class=HelpFormatter)
    train.add_argument("--method", default=None, metavar="NAME",
                       help="the baseline: hlm12erc, telme or dmd (shortcut for baseline.method; default: the "
                            "config's baseline.method)")
    train.add_argument("dataset_dir", nargs="?", metavar="DATASET_DIR",
                       help="built dataset with its feature cache (default: data.dataset_dir)")
    train.add_argument("--out", default=None, metavar="DIR",
                       help="run dir (sets run.output_dir; default: <run.output_dir>/baseline_<method>, so an "
                            "LLM run's folder is never written into)")
    train.add_argument("--resume", action="store_true",
                       help="continue from the newest checkpoint in the run dir (baseline.resume=latest)")
    train.add_argument("--check", action="store_true", help="resolve and validate the config, print it, stop")
    train.add_argument("--device", default=argparse.SUPPRESS, help=device_help)
    add_config_arguments(train)

    predict = sub.add_parser("predict", help="predict a dataset's clips with a trained baseline (JSONL)",
                             description=PREDICT_DESCRIPTION, formatter_class=HelpFormatter)
    predict.add_argument("--model", required=True, metavar="RUN_DIR", help="a run dir written by `baseline train`")
    predict.add_argument("dataset_dir", metavar="DATASET_DIR", help="built dataset with its feature cache")
    predict.add_argument("--out", required=True, metavar="FILE", help="predictions JSONL to write")
    predict.add_argument("--split", default=None, metavar="SPLIT",
                         help="records of this split ('all': every record; default: the run's data.eval_split)")
    predict.add_argument("--batch-size", type=int, default=256, help="clips per forward pass")
    predict.add_argument("--device", default=argparse.SUPPRESS, help=device_help)
    predict.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                         help="overrides of the run's config.yaml, e.g. features.cache_dir=/data/cache")


def run(args: argparse.Namespace) -> int:
    return _train(args) if args.action == "train" else _predict(args)


def _train(args: argparse.Namespace) -> int:
    import sys

    from emollm.baselines.train import train_baseline
    from emollm.cli.main import split_overrides
    from eval import references

    paths, extra = split_overrides([args.dataset_dir] if args.dataset_dir else [])
    overrides = [*extra, *args.overrides]
    if args.method:
        overrides.append(f"baseline.method={args.method}")
    if args.resume:
        overrides.append("baseline.resume=latest")
    if args.device:
        overrides.append(f"baseline.device={args.device}")
    if paths:
        overrides.append(f"data.dataset_dir={paths[0]}")
    cfg = cfglib.load(args.config, overrides)  # a typo fails here, before any work
    if not cfg.data.dataset_dir:
        raise ConfigError("no dataset folder given", hint="emollm baseline train --method NAME --config FILE DATASET_DIR")
    out = args.out or str(Path(cfg.run.output_dir) / f"baseline_{cfg.baseline.method}")
    cfg = cfglib.load(args.config, [*overrides, f"run.output_dir={out}"])
    if args.check:
        sys.stdout.write(cfglib.dump_yaml(cfg))
        return 0
    result = train_baseline(cfg, cfg.data.dataset_dir)
    line = f"trained {cfg.baseline.method}: {result.epochs} epoch(s)"
    if result.losses:
        line += f", final loss {result.losses[-1]:.4f}"
    if result.eval_metrics:
        shown = {k: v for k, v in result.eval_metrics.items() if k in ("war", "uar", "waf", "macro_f1", "acc2_nonzero",
                                                                        "acc7", "mae", "corr")}
        source = result.eval_metrics.get("reference_source")
        line += "; eval" + (f" vs {references.NAMES[source]}" if source else "") + " " + " ".join(
            f"{k}={v:.4f}" for k, v in shown.items())
        for other, scores in result.eval_metrics.get("by_reference", {}).items():
            line += f"; vs {references.NAMES[other]} " + " ".join(
                f"{k}={v:.4f}" for k, v in scores.items() if k != "n")
    print(f"{line}; run dir {result.output_dir}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import sys

    from emollm.baselines.train import predict

    overrides = list(args.overrides) + ([f"baseline.device={args.device}"] if args.device else [])
    run_dir = Path(args.model)
    saved = run_dir / cfglib.RESOLVED_CONFIG_NAME
    cfg = cfglib.load(saved if saved.is_file() else None, overrides)
    split = cfg.data.eval_split if args.split is None else (None if args.split == "all" else args.split)
    summary = predict(run_dir, args.dataset_dir, args.out, split=split, overrides=overrides,
                      batch_size=args.batch_size)
    from eval import references

    print(f"wrote {summary.n} prediction(s) of split {summary.split or 'all'} to {summary.out}")
    refs = summary.references
    if not refs:
        what = "a label or pseudo-label" if cfg.baseline.task == "classification" else \
            f"a '{cfg.baseline.target_field}' score"
        print(f"warning: no clip of split {summary.split or 'all'} has {what}: there is nothing to score these "
              "predictions against (label the dataset, or evaluate them with --references FILE)", file=sys.stderr)
        return 0
    if cfg.baseline.task == "classification":
        print(f"the rows carry their references (gt, gt_source): {references.describe(refs)}")
    # the rows carry their references: evaluate needs no --references
    command = ["emollm", "evaluate", "--predictions", str(summary.out), "--out", str(Path(summary.out).with_suffix("")) + "_eval"]
    if cfg.baseline.task == "classification":
        command.append(f"evaluate.label_set={cfg.eval_label_set}")
    print("score it with: " + " ".join(shlex.quote(c) for c in command), file=sys.stderr)
    return 0
