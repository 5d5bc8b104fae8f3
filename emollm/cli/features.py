"""``emollm features``: run each frozen encoder once per clip of a built dataset into the feature cache."""

from __future__ import annotations

import argparse
import sys

from emollm import config as cfglib
from emollm.errors import ConfigError

NAME = "features"
HELP = "extract frozen-encoder features of a built dataset into the feature cache (resumable, shardable)"
DESCRIPTION = """\
Decode every clip of DATASET_DIR once, track its face, run each frozen encoder of model.encoders once
per clip and write safetensors under features.cache_dir (default DATASET_DIR/features), in one folder
per encoder fingerprint. Each entry records the inputs it was computed from (media and face settings,
the clip file's identity, the peak frame, the subtitle, features.dtype): an entry made from other
inputs is stale and recomputed, never served. Rerun the same command after an interruption: entries
already cached are kept once read back and checked (header, clip id, encoder, checksum, finite values);
a damaged one is recomputed. Failed clips (and NaN / inf features, never stored) go to
<cache>/errors.jsonl (exit 2).

--check reports, per encoder, how many entries are fresh, stale (and which input changed), corrupt
(unreadable, another clip's or encoder's file, checksum mismatch, NaN / inf), orphaned (no record / no
clip file) and missing, and lists unverified ones (no checksum: an older emollm wrote them); exit 0
when all are fresh, else 1. --prune also deletes the stale, corrupt and orphaned entries.

  emollm features --config train_configs/tiny_cpu.yaml data/merr
  emollm features --config run.yaml data/merr --shard 1/4       # one of 4 processes / nodes
  accelerate launch -m emollm.cli.main features --config run.yaml data/merr   # RANK/WORLD_SIZE shards
  emollm features --config run.yaml data/merr --engine ray --address HEAD:6379 --gpus-per-task 0.5
  emollm features --check --config run.yaml data/merr [--prune]
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import add_config_arguments
    from emollm.engines.cli import add_engine_arguments

    parser.add_argument("dataset_dir", nargs="?", metavar="DATASET_DIR", help="built dataset (default: data.dataset_dir)")
    parser.add_argument("--shard", default=None, metavar="i/N",
                        help="every N-th clip starting at i (0-based); default: all, or RANK/WORLD_SIZE under accelerate launch")  # fmt: skip
    parser.add_argument("--check", action="store_true",
                        help="extract nothing: report fresh / stale / corrupt / orphaned / missing entries per encoder "
                             "(exit 1 unless all fresh)")
    parser.add_argument("--prune", action="store_true",
                        help="with --check: delete the stale, corrupt and orphaned entries")
    add_engine_arguments(parser, gpus=True)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from data_builders.runner import parse_shard
    from emollm.cli.main import split_overrides
    from emollm.engines.cli import engine_from_args
    from emollm.features.extract import extract_features

    paths, extra = split_overrides([args.dataset_dir] if args.dataset_dir else [])
    cfg = cfglib.load(args.config, [*extra, *args.overrides])
    dataset = paths[0] if paths else cfg.data.dataset_dir
    if not dataset:
        raise ConfigError("no dataset folder given", hint="emollm features --config FILE DATASET_DIR")
    if args.prune and not args.check:
        raise ConfigError("--prune goes with --check", hint="emollm features --check --prune --config FILE DATASET_DIR")
    engine = engine_from_args(args)  # its options checked before any file is read (Ray starts when first used)
    from emollm.config.paths import check_input_paths

    check_input_paths(cfg, "features", dataset_dir=paths[0] if paths else None)  # before any encoder loads
    if args.check:
        from emollm.features.check import check_cache

        report = check_cache(cfg, dataset, prune=args.prune)
        print(report.text())
        return 0 if report.ok else 1
    shard = parse_shard(args.shard)
    with engine:
        summary = extract_features(cfg, dataset, shard=shard, engine=engine, cpus_per_task=args.cpus_per_task,
                                   gpus_per_task=args.gpus_per_task)
    print(summary.table())
    if summary.failed:
        print(f"{summary.failed} clip(s) failed: see {summary.cache_dir}/errors.jsonl", file=sys.stderr)
        return 2
    return 0
