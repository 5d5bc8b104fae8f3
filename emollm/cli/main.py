"""The ``emollm`` command.

Each subcommand lives in its own module under ``emollm/cli/`` and is listed in ``COMMANDS``; a
capability's command is added here when the capability is built (never a placeholder). A module
provides ``NAME``, ``HELP``, ``DESCRIPTION``, ``add_arguments(parser)`` and ``run(args) -> int``.

Errors: an :class:`~emollm.errors.EmollmError` reaches the user as one ``error:`` line plus a
``hint:`` line, exit code 2; anything else is a bug and prints one line asking for ``--debug``,
exit code 1. ``--debug`` shows full tracebacks and debug logs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence

from emollm.errors import EmollmError
from emollm.log import setup_logging
from emollm.version import __version__

# Module names under emollm.cli, in --help order.
COMMANDS = ("demo", "build", "review", "export", "features", "train", "predict", "infer", "serve", "render", "baseline", "evaluate", "probe", "models", "importing", "config")

EXIT_USER_ERROR = 2
EXIT_BUG = 1


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the description's line breaks."""


def add_config_arguments(parser: argparse.ArgumentParser, *, default: str | None = None) -> None:
    """The ``--config FILE`` option and ``key=value`` overrides shared by config-driven commands."""
    parser.add_argument(
        "--config",
        default=default,
        metavar="FILE",
        help="YAML config (a path, or the name of a shipped config in train_configs/, e.g. tiny_cpu)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="dotted overrides applied after the file, e.g. train.lr=2e-5 model.backbone.name_or_path=/ckpt",
    )


_OVERRIDE = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+)*=")


def split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``KEY=VALUE`` overrides from path positionals that argparse collected together.

    An item is an override when it looks like ``dotted.key=value`` and is not an existing path.
    """
    paths, overrides = [], []
    for item in items:
        (overrides if _OVERRIDE.match(item) and not os.path.exists(item) else paths).append(item)
    return paths, overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emollm",
        description="Multimodal emotion LLMs: build datasets from clips, train, evaluate, explain a clip.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"emollm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show debug logs and full tracebacks")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        module = importlib.import_module(f"emollm.cli.{name}")
        cmd = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=HelpFormatter,
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def _report(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    if isinstance(exc, EmollmError):
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
    if not debug:
        print("hint: this is a bug in emollm; run again with --debug for the traceback and report it", file=sys.stderr)
    return EXIT_BUG


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # argparse cannot place `KEY=VALUE` positionals after options (`--config f a.b=1`); collect them here.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    setup_logging(level, progress=False if args.quiet else None)
    if not args.debug:  # third-party weight-loading bars and advisories drown the command's own output
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # deprecations inside third-party code (peft calling transformers) are not the user's to act on
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place errors become messages
        return _report(exc, args.debug)


if __name__ == "__main__":
    sys.exit(main())
