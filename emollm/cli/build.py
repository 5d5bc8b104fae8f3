"""``emollm build``: a folder of raw clips -> AUs -> peak frame -> pseudo-labels (MERR-style dataset)."""

from __future__ import annotations

import argparse
import sys

from emollm import config as cfglib
from emollm.errors import ConfigError

NAME = "build"
HELP = "build a MERR-style dataset from a folder of clips: AUs, peak frame, AU-rule pseudo-labels (resumable)"
DESCRIPTION = """\
Analyse every clip under CLIPS_DIR (videos, audio-only files, still images; recursive) and write
DATASET_DIR/annotations.jsonl, errors.jsonl, manifest.json, config.yaml and aus/<clip_id>.npz.
Run the same command again after an interruption: finished clips are kept, the rest are done.
A broken clip becomes one line of errors.jsonl; the exit status is 2 when any clip failed.

  emollm build clips/ --out data/merr
  emollm build clips/ --out data/merr --workers 2 build.au_fps=8 data.labels_csv=labels.csv
  emollm build clips/ --out data/merr --shard 0/4      # one of 4 processes / nodes; then --merge
  emollm build clips/ --out data/merr --engine ray     # one Ray task per clip, a local Ray instance
  emollm build clips/ --out data/merr --engine ray --address HEAD:6379   # a Ray cluster (docs/scale.md)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import add_config_arguments
    from emollm.engines.cli import add_engine_arguments

    parser.add_argument("clips_dir", nargs="?", metavar="CLIPS_DIR", help="folder of clips (default: data.clips_dir)")
    parser.add_argument("--out", metavar="DATASET_DIR", default=None, help="output folder (default: data.dataset_dir)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes (default: build.workers); --engine ray: the CPUs of the local Ray instance")
    parser.add_argument("--shard", default=None, metavar="i/N",
                        help="process every N-th clip starting at i (0-based); default: all, or RANK/WORLD_SIZE under accelerate launch")  # fmt: skip
    parser.add_argument("--labels", default=None, metavar="CSV", help="ground-truth labels CSV (id,label[,split])")
    parser.add_argument("--subtitles", default=None, metavar="CSV", help="subtitles CSV (id,subtitle)")
    parser.add_argument("--merge", action="store_true", help="only merge the part files of finished shards")
    add_engine_arguments(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from data_builders.runner import build, parse_shard
    from emollm.cli.main import split_overrides
    from emollm.engines.cli import engine_from_args

    paths, extra = split_overrides([args.clips_dir] if args.clips_dir else [])
    overrides = [*extra, *args.overrides]
    if args.labels:
        overrides.append(f"data.labels_csv={args.labels}")
    if args.subtitles:
        overrides.append(f"data.subtitles_csv={args.subtitles}")
    cfg = cfglib.load(args.config, overrides)
    clips_dir = paths[0] if paths else cfg.data.clips_dir
    out = args.out or cfg.data.dataset_dir
    if not clips_dir:
        raise ConfigError("no clips folder given", hint="emollm build CLIPS_DIR --out DATASET_DIR")
    if not out:
        raise ConfigError("no output folder given", hint="emollm build CLIPS_DIR --out DATASET_DIR")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    shard = parse_shard(args.shard)
    with engine_from_args(args, local_workers=args.workers or cfg.build.workers) as engine:
        summary = build(cfg, clips_dir, out, workers=args.workers, shard=shard, merge_only=args.merge, engine=engine,
                        cpus_per_task=args.cpus_per_task)
    print(summary.table())
    if args.merge and not summary.merged:
        shown = ", ".join(repr(m) for m in summary.missing[:5])
        more = f" and {len(summary.missing) - 5} more" if len(summary.missing) > 5 else ""
        raise ConfigError(f"cannot merge {out}: {len(summary.missing)} clip(s) have no finished part yet: {shown}{more}",
                          hint="run the missing shards (or the build without --shard) first")  # fmt: skip
    if summary.merged:
        print(f"wrote {summary.out_dir}/annotations.jsonl ({summary.records} records), errors.jsonl ({summary.errors}), manifest.json")
    status = 0
    if summary.failed:
        print(f"{summary.failed} clip(s) failed: see errors.jsonl", file=sys.stderr)
        status = 2
    all_failed = (summary.text or {}).get("writer_all_failed")
    if all_failed:  # the records are written (reasoning empty, flag writer_failed); the run still says it failed
        print(f"every writer answer was unusable ({all_failed['count']} of {all_failed['count']}); e.g. "
              f"{all_failed['example_id']}: {all_failed['example']} (see writer_failures.jsonl)", file=sys.stderr)
        status = 2
    return status
    return 0
