"""Frame sampling speed: emollm's ``read_frames`` vs. a bare PyAV decode-everything baseline.

The baseline is what most emotion-LLM pipelines do: decode every frame to RGB, then pick the
sampled ones. emollm probes the file (packet count, no decode), decodes with FFmpeg threads,
converts only the sampled frames to RGB, and stops after the last one it needs. Both return the
same frames (checked); the figure that matters is the ratio, measured in one run.

    python benchmarks/media_decode.py [--frames 16] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import av
import numpy as np

from emollm.media import probe, read_frames, sample_frame_indices
from emollm.testing.samples import sample_path

CLIPS = ("WolfgangLanger_Pexels.mp4", "noface_face.mov", "single_face.mp4")


def baseline(path: str, num_frames: int) -> np.ndarray:
    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picks = sample_frame_indices(len(frames), num_frames=num_frames)
    return np.stack([frames[i] for i in picks])


def ours(path: str, num_frames: int) -> np.ndarray:
    return read_frames(path, num_frames=num_frames).array


def timed(fn, *args, repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    rows = []
    for name in CLIPS:
        path = str(sample_path(name))
        info = probe(path)
        t_base, a = timed(baseline, path, args.frames, repeats=args.repeats)
        t_ours, b = timed(ours, path, args.frames, repeats=args.repeats)
        assert a.shape == b.shape and np.array_equal(a, b), f"{name}: frames differ from the baseline"
        rows.append({
            "clip": name, "codec": info.video_codec, "size": f"{info.width}x{info.height}",
            "frames_in_file": info.num_frames, "sampled": args.frames,
            "baseline_s": round(t_base, 4), "emollm_s": round(t_ours, 4), "speedup": round(t_base / t_ours, 2),
        })  # fmt: skip

    print(f"{'clip':28} {'codec':6} {'size':9} {'frames':>6} {'baseline s':>10} {'emollm s':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['clip']:28} {r['codec']:6} {r['size']:9} {r['frames_in_file']:>6} "
              f"{r['baseline_s']:>10.3f} {r['emollm_s']:>9.3f} {r['speedup']:>7.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
