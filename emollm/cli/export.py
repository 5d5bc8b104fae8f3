"""``emollm export``: a dataset -> MERR / LLaMA-Factory ShareGPT / HF datasets (and MERR -> a dataset), or a run -> a model directory."""

from __future__ import annotations

import argparse

from emollm.errors import ConfigError

NAME = "export"
HELP = "convert a dataset (MERR, ShareGPT, HF datasets) or export a trained run as a self-contained model directory"
DESCRIPTION = """\
Convert between an emollm dataset (DATASET_DIR/annotations.jsonl) and other formats (docs/builder.md, "Formats"),
or export a trained run as one self-contained HF-format model directory (docs/model.md, "Export").

  emollm export --to merr DATASET_DIR --out merr/          # merr/MERR_{coarse,fine}_grained.{txt,json}
  emollm export --to sharegpt DATASET_DIR --out lf/         # lf/emollm_emotion.json, emollm_reason.json, dataset_info.json
  emollm export --to hf DATASET_DIR --out hf/ [--overwrite] # datasets.load_from_disk("hf/"): records per split;
                                                            # hf/instructions/<task>/: instruction samples per split
  emollm export --from merr MERR_DIR_OR_FILE --out DATASET_DIR [--media-dir video --media-ext .mp4]
      [--peak-base 1]   MERR's peak_index is OpenFace's 1-based frame number (MER-Factory); 0 for 0-based files
  emollm export --model RUN_DIR --out DIR [--merge] [--no-encoders] [--metrics FILE] [--overwrite]

--model copies the base model (or, with --merge, merges the LoRA adapter into it), the frozen
encoders, the processor with its chat template and a model card into DIR; paths inside DIR are
relative, so it can be moved. Load it with EmoLLMForConditionalGeneration.from_pretrained(DIR).
"""

_MODEL_ONLY = ("merge", "no_encoders", "metrics", "overwrite")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", nargs="?", default=None,
                        help="DATASET_DIR (with --to) or MERR folder / file (with --from); not used with --model")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", choices=("merr", "sharegpt", "hf"), help="export DATASET_DIR to this format")
    group.add_argument("--from", dest="from_", choices=("merr",), help="import SOURCE from this format into --out")
    group.add_argument("--model", metavar="RUN_DIR", default=None,
                       help="export this run dir (emollm train's output) as a self-contained model directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--name", default="MERR",
                        help="--to merr: file prefix: NAME_coarse_grained.{txt,json} and NAME_fine_grained.{txt,json}")
    parser.add_argument("--peak-base", type=int, choices=(0, 1), default=1,
                        help="--to / --from merr: peak_index = emollm's 0-based frame index + this (1: OpenFace frame "
                             "numbers, as MER-Factory writes them)")  # fmt: skip
    parser.add_argument("--relative-to", default=None, metavar="DIR",
                        help="--to sharegpt: write media paths relative to this folder (LLaMA-Factory media_dir); default absolute")  # fmt: skip
    parser.add_argument("--media-dir", default="video", help="--from merr: media path of a clip is MEDIA_DIR/<name><ext>")
    parser.add_argument("--media-ext", default=".mp4", help="--from merr: media file extension")
    parser.add_argument("--label-set", default="merr", help="--from merr: label set of the imported dataset")
    parser.add_argument("--merge", action="store_true", help="--model: merge the LoRA adapter into the backbone weights")
    parser.add_argument("--no-encoders", action="store_true",
                        help="--model: leave the frozen encoders out (the model then reads cached features only)")
    parser.add_argument("--metrics", default=None, metavar="FILE",
                        help="--model: an `emollm evaluate` metrics.json for the model card (default: one in RUN_DIR)")
    parser.add_argument("--overwrite", action="store_true", help="--model, --to hf: replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.model:
        return _export_model(args)
    given = [f"--{name.replace('_', '-')}" for name in _MODEL_ONLY if getattr(args, name)
             and not (name == "overwrite" and args.to == "hf")]
    if given:
        raise ConfigError(f"{', '.join(given)}: only for --model", hint="emollm export --model RUN_DIR --out DIR")
    if args.source is None:
        raise ConfigError(f"--{'to' if args.to else 'from'} needs SOURCE",
                          hint="emollm export --to merr DATASET_DIR --out DIR")
    if args.to and not (Path(args.source) / "annotations.jsonl").is_file():
        raise ConfigError(f"{args.source} holds no annotations.jsonl", hint="emollm build CLIPS_DIR --out DATASET_DIR first")
    if args.to == "merr":
        from data_builders.formats.merr import export_merr

        res = export_merr(args.source, args.out, name=args.name, peak_base=args.peak_base)
        for kind in ("coarse", "fine"):
            r = res[kind]
            print(f"wrote {r['txt']} ({r['lines']} lines) and {r['json']} ({r['entries']} entries)")
    elif args.to == "sharegpt":
        from data_builders.formats.sharegpt import export_sharegpt

        counts = export_sharegpt(args.source, args.out, relative_to=args.relative_to)
        print(f"wrote {args.out}: " + ", ".join(f"emollm_{t}.json ({n})" for t, n in counts.items()) + ", dataset_info.json")
    elif args.to == "hf":
        from emollm.dataset.hf import export_hf

        res = export_hf(args.source, args.out, overwrite=args.overwrite)
        print(f"wrote {args.out}: records " + ", ".join(f"{s} ({n})" for s, n in res["records"].items())
              + "".join(f", instructions/{t} ({n})" for t, n in res["instructions"].items()))
    else:
        from data_builders.formats.merr import import_merr

        res = import_merr(args.source, args.out, media_dir=args.media_dir, media_ext=args.media_ext,
                          label_set=args.label_set, peak_base=args.peak_base)  # fmt: skip
        print(f"wrote {args.out}/annotations.jsonl ({res['records']} records from {res['txt_lines']} txt lines, "
              f"{res['json_entries']} json entries)")  # fmt: skip
    return 0


def _export_model(args: argparse.Namespace) -> int:
    from emollm.exporting import export_model

    if args.source is not None:
        raise ConfigError(f"--model takes no SOURCE (got '{args.source}')", hint="emollm export --model RUN_DIR --out DIR")
    res = export_model(args.model, args.out, merge=args.merge, include_encoders=not args.no_encoders,
                       metrics=args.metrics, overwrite=args.overwrite)
    encoders = [name for name, path in res["encoders"].items() if path and path.startswith("encoders/")]
    print(f"wrote {res['out_dir']} ({res['kind']}, {res['files']} files, {res['bytes'] / 1e6:.1f} MB, "
          f"{res['seconds']:.1f} s); encoders: {', '.join(encoders) or 'none (cached features only)'}")
    return 0  # res["notes"] were logged as warnings (stderr) and are in the model card
