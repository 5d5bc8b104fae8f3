"""``emollm train``: the same entry as ``train.py`` (``accelerate launch train.py ...``)."""

from __future__ import annotations

import argparse
import sys

from emollm import config as cfglib
from emollm.config.paths import check_input_paths

NAME = "train"
HELP = "train a model from a built dataset and its feature cache (LoRA, checkpoints, resume)"
DESCRIPTION = """\
Train per the config's train section on data.dataset_dir (a built dataset whose features are cached
by `emollm features`). Checkpoints go to <run.output_dir>/checkpoint-<step>; the final run dir
(<run.output_dir>) holds config, processor, adapter and media modules. See docs/training.md.

  emollm train --config tiny_cpu data.dataset_dir=data/merr data.train_split=coarse
  emollm train --config run.yaml --resume                       # from the newest checkpoint
  accelerate launch train.py --config run.yaml                  # the same, on GPUs / several processes
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--check", action="store_true", help="resolve and validate the config, print it, stop")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint (train.resume=latest)")


def run(args: argparse.Namespace) -> int:
    from emollm.training.loop import train

    overrides = list(args.overrides) + (["train.resume=latest"] if args.resume else [])
    cfg = cfglib.load(args.config, overrides)  # a typo fails here, before any work
    if args.check:
        sys.stdout.write(cfglib.dump_yaml(cfg))
        return 0
    check_input_paths(cfg, "train")  # a missing folder fails now, not after the backbone has loaded
    if cfg.train.stage == "grpo":  # reinforcement learning after SFT (docs/training.md "GRPO")
        from emollm.training.grpo import train_grpo

        result = train_grpo(cfg)
    else:
        result = train(cfg)
    print(f"trained {result.global_step} steps; final loss {result.losses[-1]:.4f}; run dir {result.output_dir}"
          if result.losses else f"nothing to do: already at step {result.global_step}; run dir {result.output_dir}")
    return 0
