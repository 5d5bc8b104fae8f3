"""``emollm export``: a built dataset -> Emotion-LLaMA MERR files or LLaMA-Factory ShareGPT; MERR -> a dataset."""

from __future__ import annotations

import argparse

from emollm.errors import ConfigError

NAME = "export"
HELP = "convert a dataset: to MERR txt/json or LLaMA-Factory ShareGPT, or import MERR files"
DESCRIPTION = """\
Convert between an emollm dataset (DATASET_DIR/annotations.jsonl) and other formats (docs/builder.md, "Formats").

  emollm export --to merr DATASET_DIR --out merr/          # merr/MERR.txt + merr/MERR.json
  emollm export --to sharegpt DATASET_DIR --out lf/         # lf/emollm_emotion.json, emollm_reason.json, dataset_info.json
  emollm export --from merr MERR_DIR_OR_FILE --out DATASET_DIR [--media-dir video --media-ext .mp4]
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="DATASET_DIR (with --to) or MERR folder / file (with --from)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", choices=("merr", "sharegpt"), help="export DATASET_DIR to this format")
    group.add_argument("--from", dest="from_", choices=("merr",), help="import SOURCE from this format into --out")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--name", default="MERR", help="--to merr: base name of the .txt / .json files")
    parser.add_argument("--relative-to", default=None, metavar="DIR",
                        help="--to sharegpt: write media paths relative to this folder (LLaMA-Factory media_dir); default absolute")  # fmt: skip
    parser.add_argument("--media-dir", default="video", help="--from merr: media path of a clip is MEDIA_DIR/<name><ext>")
    parser.add_argument("--media-ext", default=".mp4", help="--from merr: media file extension")
    parser.add_argument("--label-set", default="merr", help="--from merr: label set of the imported dataset")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.to and not (Path(args.source) / "annotations.jsonl").is_file():
        raise ConfigError(f"{args.source} holds no annotations.jsonl", hint="emollm build CLIPS_DIR --out DATASET_DIR first")
    if args.to == "merr":
        from data_builders.formats.merr import export_merr

        res = export_merr(args.source, args.out, name=args.name)
        print(f"wrote {res['txt']} ({res['lines']} lines) and {res['json']} ({res['entries']} entries)")
    elif args.to == "sharegpt":
        from data_builders.formats.sharegpt import export_sharegpt

        counts = export_sharegpt(args.source, args.out, relative_to=args.relative_to)
        print(f"wrote {args.out}: " + ", ".join(f"emollm_{t}.json ({n})" for t, n in counts.items()) + ", dataset_info.json")
    else:
        from data_builders.formats.merr import import_merr

        res = import_merr(args.source, args.out, media_dir=args.media_dir, media_ext=args.media_ext, label_set=args.label_set)
        print(f"wrote {args.out}/annotations.jsonl ({res['records']} records from {res['txt_lines']} txt lines, "
              f"{res['json_entries']} json entries)")  # fmt: skip
    return 0
