"""``emollm review``: export uncertain samples for a human, import the corrections, or review them in a
local web page."""

from __future__ import annotations

import argparse
import sys

NAME = "review"
HELP = "review loop: export low-confidence / disputed samples (CSV, JSONL, PNGs), import corrections, or a web page"
DESCRIPTION = """\
  emollm review export DATASET_DIR --out review/ [--threshold 0.5] [--all]
      -> review/review.csv, review/review.jsonl, review/thumbs/<id>_peak.png and <id>_aus.png
         (an id in a subfolder, e.g. sub/clip1, gets review/thumbs/sub/clip1_peak.png; paths in the CSV are
         relative to review/, '/'-separated)
  emollm review import DATASET_DIR review/review.csv [--reviewer NAME]
      columns id,label[,note][,reviewer] (CSV or JSONL). Valid rows are applied; unknown ids and labels
      outside the label set are listed per row (DATASET_DIR/review_errors.jsonl; exit status 2).
      Reviews are kept in DATASET_DIR/reviews.jsonl and survive every re-run of `emollm build`.
  emollm review serve DATASET_DIR [--port 8000] [--host 127.0.0.1] [--token T] [--queue uncertain|all]
                      [--threshold 0.5] [--reviewer NAME]
      the review queue as a local web page (needs the 'web' extra): per clip the video, a frame strip,
      the peak frame, the face crop, the AU chart, subtitle, tone, descriptions, reasoning, each cue's
      vote and the fused confidence. Keys: a accept, 1-9 pick a label then Enter (or c) correct,
      s or -> skip, <- back. Decisions go where `review import` puts them (same files, same lock:
      several reviewers at once lose nothing); a reload resumes at the first undecided clip.
      --queue uncertain (default): what `review export` selects, not yet reviewed; all: every clip.
      --reviewer defaults to the OS user. A --host other than 127.0.0.1 requires a token (given with
      --token, at least 16 characters, or generated and printed with the URL).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("export", "import", "serve"))
    parser.add_argument("dataset_dir", metavar="DATASET_DIR")
    parser.add_argument("corrections", nargs="?", metavar="FILE", help="import: the corrections CSV / JSONL")
    parser.add_argument("--out", default=None, metavar="DIR", help="export: output folder (default DATASET_DIR/review)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="export, serve: pseudo_label_confidence below this is low")  # fmt: skip
    parser.add_argument("--all", action="store_true", help="export: include samples already reviewed")
    parser.add_argument("--no-images", action="store_true", help="export: no thumbnails / AU charts")
    parser.add_argument("--reviewer", default=None,
                        help="import: reviewer for rows without a reviewer column; serve: the name decisions "
                             "are recorded under (default: the OS user)")  # fmt: skip
    parser.add_argument("--queue", choices=("uncertain", "all"), default="uncertain",
                        help="serve: the uncertain clips not yet reviewed (default), or every clip")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="serve: address to bind (not loopback: a token is required)")
    parser.add_argument("--port", type=int, default=8000, help="serve: port (default 8000)")
    parser.add_argument("--token", default=None, help="serve: the access token (default: none on 127.0.0.1, else generated)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from data_builders import review
    from emollm.errors import ConfigError

    if args.action == "export":
        out = args.out or str(Path(args.dataset_dir) / "review")
        res = review.export_review(args.dataset_dir, out, threshold=args.threshold, include_reviewed=args.all,
                                   images=not args.no_images)  # fmt: skip
        print(f"wrote {res.csv_path} and {res.jsonl_path}: {len(res.rows)} sample(s) to review")
        return 0
    if args.action == "serve":
        if args.corrections:
            raise ConfigError(f"review serve takes no FILE (got {args.corrections!r})",
                              hint="emollm review serve DATASET_DIR [--port 8000]")  # fmt: skip
        from emollm import web

        web.require_web()
        from emollm.web.review import review_app

        app = review_app(args.dataset_dir, queue=args.queue, threshold=args.threshold, reviewer=args.reviewer)
        web.serve(app, host=args.host, port=args.port, token=args.token, what="review")
        return 0
    if not args.corrections:
        raise ConfigError("review import needs the corrections FILE", hint="emollm review import DATASET_DIR review.csv")
    res = review.import_corrections(args.dataset_dir, args.corrections, reviewer=args.reviewer)
    print(f"applied {len(res.applied)} of {res.rows} row(s)")
    for e in res.errors:
        print(f"row {e['row']} ({e['id']}): {e['error']}", file=sys.stderr)
    return 2 if res.errors else 0
