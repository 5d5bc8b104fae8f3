"""Per-AU agreement of the built-in extractor with OpenFace on the same frames.

    python benchmarks/au_agreement.py CLIPS_DIR OPENFACE_DIR [--json out.json] [key=value ...]
    python benchmarks/au_agreement.py --landmarks A.csv [B.csv ...] [--json out.json]
    python benchmarks/au_agreement.py --sample        # py-feat's OpenFace_Test.csv (landmark mode)

- **clips mode**: ``emollm build``'s own per-clip analysis (the configured face detector, dlib's 68
  landmarks, landmark_au) on each clip of CLIPS_DIR, against ``OPENFACE_DIR/<clip_id>.csv`` (OpenFace 2.x
  ``FeatureExtraction`` output) on the frames both measured;
- **landmark mode**: the built-in AU geometry on OpenFace's *own* 2D landmarks (the CSV's ``x_i, y_i``),
  against the same CSV's AUs: the AU formulas alone, no detector in between.

Per AU: Pearson's r of the intensities, presence F1 (OpenFace's ``AUxx_c`` as the truth), the presence
rates; and the means over the AUs OpenFace marks present at least once. Nothing is timed (the
protocol header, printed first, records the thread settings the figures were made with).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the shared protocol, also when loaded by path (tests)

import protocol  # noqa: E402


def landmark_mode(csvs: list[Path]) -> dict:
    from data_builders.au.agreement import agreement, openface_landmarks
    from data_builders.au.landmark_au import series_from_landmarks
    from data_builders.au.openface_csv import read_openface_csv

    out = {}
    for path in csvs:
        frames, times, lm = openface_landmarks(path)
        ours = series_from_landmarks(lm, frames, times, still=len(frames) < 3)
        out[path.name] = agreement(ours, read_openface_csv(path))
    return out


def clips_mode(clips: Path, openface_dir: Path, overrides: list[str]) -> dict:
    from data_builders.analysis import analyse_clip
    from data_builders.au.agreement import agreement
    from data_builders.au.openface_csv import find_csv, read_openface_csv
    from data_builders.inputs import discover_clips
    from emollm import config as cfglib
    from emollm.errors import EmollmError
    from emollm.media import probe

    cfg = cfglib.load(None, ["build.au_source=builtin", *overrides])
    out = {}
    for clip in discover_clips(clips):
        try:
            reference = read_openface_csv(find_csv(openface_dir, clip.id), min_confidence=cfg.build.min_confidence)
            analysis = analyse_clip(probe(clip.path), cfg, audio=False)
        except EmollmError as e:
            out[clip.id] = {"error": e.message}
            continue
        out[clip.id] = agreement(analysis.aus, reference)
    return out


def _print(results: dict) -> None:
    from emollm.dataset.aus import MERR_AUS

    for name, res in results.items():
        if "error" in res:
            print(f"{name}: {res['error']}")
            continue
        print(f"{name}: {res['frames']} frames, mean r {res['mean_r']}, mean presence F1 {res['mean_f1']}")
        for au in MERR_AUS:
            row = res["per_au"].get(au)
            if row:
                print(f"  {au}  r {str(row['r']):>7}  F1 {str(row['f1']):>6}  OpenFace present {row['reference_rate']:.2f}"
                      f"  ours {row['ours_rate']:.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("args", nargs="*", metavar="CLIPS_DIR OPENFACE_DIR [key=value ...]")
    ap.add_argument("--landmarks", nargs="+", type=Path, help="OpenFace CSVs with landmarks: AU formulas only")
    ap.add_argument("--sample", action="store_true", help="py-feat's OpenFace_Test.csv (landmark mode)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    overrides = [x for x in a.args if "=" in x]
    paths = [Path(x) for x in a.args if "=" not in x]
    print(protocol.header(protocol.setup_threads(1)))
    if a.sample:
        from emollm.testing.samples import sample_path

        results = landmark_mode([sample_path("OpenFace_Test.csv")])
    elif a.landmarks:
        results = landmark_mode(a.landmarks)
    elif len(paths) == 2:
        results = clips_mode(paths[0], paths[1], overrides)
    else:
        ap.error("give CLIPS_DIR OPENFACE_DIR, --landmarks CSV..., or --sample")
    _print(results)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
