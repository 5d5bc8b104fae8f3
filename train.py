"""Training entry for ``accelerate launch`` (and plain ``python``).

    accelerate launch --config_file train_configs/accelerate/<setup>.yaml train.py \
        --config train_configs/<run>.yaml [--resume] [key=value ...]

The config is resolved exactly as every ``emollm`` command resolves it (``extends:``, ``${ENV}``,
dotted overrides, validation), so a typo fails here, on every rank, before any GPU work starts.
``--check`` stops after that and prints the resolved config. ``emollm train`` is the same entry.
See docs/training.md.
"""

from __future__ import annotations

import sys

from emollm.cli import main as cli


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    lead = [a for a in ("--debug", "--quiet") if a in argv]
    rest = [a for a in argv if a not in lead]
    return cli.main([*lead, "train", *rest])


if __name__ == "__main__":
    sys.exit(main())
