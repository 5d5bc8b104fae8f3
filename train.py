"""Training entry for ``accelerate launch``.

    accelerate launch --config_file train_configs/accelerate/<setup>.yaml train.py \
        --config train_configs/<run>.yaml [key=value ...]

The config is resolved exactly as every ``emollm`` command resolves it (``extends:``, ``${ENV}``,
dotted overrides, validation), so a typo fails here, on every rank, before any GPU work starts.
``--check`` stops after that and prints the resolved config.

The training loop itself (LoRA, DeepSpeed ZeRO, stages, feature cache) is not built yet: this
entry says so rather than pretending to train.
"""

from __future__ import annotations

import argparse
import sys

from emollm import config as cfglib
from emollm.errors import EmollmError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run config (path or shipped name, e.g. tiny_cpu)")
    parser.add_argument("--check", action="store_true", help="resolve and validate the config, print it, stop")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=2e-5")
    args = parser.parse_args(argv)
    try:
        cfg = cfglib.load(args.config, args.overrides)
        if args.check:
            sys.stdout.write(cfglib.dump_yaml(cfg))
            return 0
        raise EmollmError(
            "the config is valid, but the training loop is not part of this emollm version yet",
            hint="use --check to validate configs before launching",
        )
    except EmollmError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
