"""``emollm predict``: batched generation over a built dataset with a trained run -> predictions JSONL."""

from __future__ import annotations

import argparse

NAME = "predict"
HELP = "generate answers for a built dataset's clips with a trained run (resumable; feeds `emollm evaluate`)"
DESCRIPTION = """\
Answer the emotion (or reasoning) prompt for every record of DATASET_DIR's split with the run in
RUN_DIR (the dir train.py wrote), in left-padded, length-sorted batches with the KV cache. Media come
from the dataset's feature cache; entries it lacks for this run's encoders are computed first. Each
batch is appended to OUT as soon as it is generated: rerun the same command after an interruption and
it continues where it stopped. Rows carry the reference label (gt) when the record has one, so

  emollm predict --model runs/my_run data/merr --split test --out runs/my_run/preds.jsonl
  emollm evaluate --predictions runs/my_run/preds.jsonl --out runs/my_run/eval

scores them (or pass --references DATASET_DIR). Generation settings come from the run's config
(predict.*: max_new_tokens, temperature, top_p, num_beams, batch_size) unless given here.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", metavar="DATASET_DIR", help="a built dataset (annotations.jsonl + its feature cache)")
    parser.add_argument("--model", required=True, metavar="RUN_DIR",
                        help="the run dir train.py wrote, or an `emollm export --model` of it")
    parser.add_argument("--out", required=True, metavar="FILE", help="predictions JSONL (appended to: resumable)")
    parser.add_argument("--task", default="emotion", choices=("emotion", "reason"), help="which instruction to answer")
    parser.add_argument("--split", default=None,
                        help="records of this split only (default: the run's data.eval_split; 'all' for every record)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="at most N new predictions (a quick look)")
    add_generation_arguments(parser)
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of the run's config, e.g. features.cache_dir=/fast/cache")


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Generation and placement options shared by ``predict`` and ``infer``."""
    group = parser.add_argument_group("generation (default: the run's predict.* settings)")
    group.add_argument("--max-new-tokens", type=int, default=None, metavar="N")
    group.add_argument("--temperature", type=float, default=None, help="0: greedy; > 0: sampling")
    group.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with --temperature > 0)")
    group.add_argument("--num-beams", type=int, default=None, metavar="N",
                       help="1: greedy; > 1: beam search (with --temperature > 0: beam sampling)")
    group.add_argument("--batch-size", type=int, default=None, metavar="N")
    group.add_argument("--seed", type=int, default=None, help="seed for sampling (same seed, same answers)")
    group.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    group.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"),
                       help="load the backbone in this dtype (default: as trained)")


def generation_overrides(args: argparse.Namespace) -> dict:
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "num_beams": args.num_beams}


def run(args: argparse.Namespace) -> int:
    from emollm.config.paths import check_input_paths
    from emollm.inference import load_model, predict_dataset, run_config

    check_input_paths(None, "predict", dataset_dir=args.dataset_dir, extra={"--model": args.model})
    cfg = run_config(args.model, args.overrides)
    check_input_paths(cfg, "predict", dataset_dir=args.dataset_dir, run_dir=args.model)  # before the model loads
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype)
    split = cfg.data.eval_split if args.split is None else None if args.split == "all" else args.split
    summary = predict_dataset(cfg, model, processor, args.dataset_dir, args.out, task=args.task, split=split,
                              batch_size=args.batch_size, limit=args.limit, **generation_overrides(args))
    print(summary.table())
    return 0
