"""``emollm config``: show the resolved config, or list every valid key with its default."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from emollm import config as cfglib

NAME = "config"
HELP = "show a resolved config (after extends, ${ENV} and overrides) or list the valid keys"
DESCRIPTION = """\
Resolve a config the way every command does and print it as YAML, or list the valid keys.

  emollm config show --config tiny_cpu train.lr=2e-5
  emollm config keys
  emollm config show --config my.yaml --save runs/x    # also writes runs/x/config.yaml
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import add_config_arguments

    parser.add_argument("action", choices=("show", "keys"), help="show: resolved YAML; keys: valid keys and defaults")
    add_config_arguments(parser)
    parser.add_argument("--save", metavar="DIR", help="also save the resolved config as DIR/config.yaml")


def _describe(cls: type, prefix: str = "") -> list[str]:
    lines = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        nested = tp if dataclasses.is_dataclass(tp) else (inner[0] if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) else None)
        if nested is not None:
            lines.extend(_describe(nested, f"{prefix}{f.name}."))
            continue
        type_name = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
        lines.append(f"{prefix}{f.name}  [{type_name}]  default: {getattr(defaults, f.name)!r}")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.action == "keys":
        sys.stdout.write("\n".join(_describe(cfglib.EmollmConfig)) + "\n")
        return 0
    cfg = cfglib.load(args.config, args.overrides)
    sys.stdout.write(cfglib.dump_yaml(cfg))
    if args.save:
        path = cfglib.save_resolved(cfg, args.save, command="config show")
        print(f"saved {path}", file=sys.stderr)
    return 0
