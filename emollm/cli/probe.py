"""``emollm probe``: what emollm sees in clips (streams, sampled frames, audio, the face track)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from emollm import config as cfglib
from emollm.errors import EmollmError, MediaError
from emollm.log import get_logger, progress

NAME = "probe"
HELP = "inspect clips: streams, duration, sampled frames, 16 kHz audio and (with --faces) the face track"
DESCRIPTION = """\
Decode each clip the way the builder and inference will (the config's media section) and report
what was found. A clip that cannot be read is reported with its cause; the others still are.

  emollm probe clip.mp4 other.mov
  emollm probe --faces --json clip.mp4 media.num_frames=32
"""

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from emollm.cli.main import add_config_arguments

    parser.add_argument("clips", nargs="+", metavar="CLIP", help="video, audio or image files")
    parser.add_argument("--faces", action="store_true", help="also detect and track faces (needs emollm[faces])")
    parser.add_argument("--json", action="store_true", help="print one JSON object per clip instead of text")
    add_config_arguments(parser)


def probe_one(path: str, cfg: cfglib.EmollmConfig, faces: bool) -> dict:
    from emollm.media.from_config import load_clip_for, track_faces_for

    clip = load_clip_for(cfg.media, path)
    report: dict = {"path": path, "ok": True, "info": dataclasses.asdict(clip.info)}
    report["frames"] = {"count": clip.num_frames, "indices": clip.frame_indices,
                        "shape": list(clip.frames.shape) if clip.frames is not None else None}
    report["audio"] = None if clip.audio is None else {
        "sample_rate": clip.sample_rate, "seconds": round(clip.audio_duration_s, 3),
        "rms": round(float((clip.audio**2).mean() ** 0.5), 5) if clip.audio.size else 0.0,
    }
    if faces:
        track = track_faces_for(cfg.media.face, clip)
        report["faces"] = {
            "tracks": track.num_tracks,
            "main_face_frames": len(track.face_frames),
            "no_face_frames": [clip.frame_indices[p] for p in track.no_face_frames],
            "main_mean_box_area": round(track.main.mean_area, 1) if track.main else None,
        }
    return report


def _text(report: dict) -> str:
    if not report["ok"]:
        return f"{report['path']}: cannot read: {report['error']}"
    info = report["info"]
    lines = [f"{report['path']}: {info['kind']}, {info['duration_s']:.2f} s"]
    if info["has_video"]:
        lines.append(f"  video: {info['video_codec']} {info['width']}x{info['height']}, "
                     f"{info['num_frames']} frames" + (f" at {info['fps']:.2f} fps" if info["fps"] else ""))
        lines.append(f"  sampled frames: {report['frames']['count']} at {report['frames']['indices']}")
    if info["has_audio"]:
        a = report["audio"]
        lines.append(f"  audio: {info['audio_codec']} {info['audio_sample_rate']} Hz x{info['audio_channels']}"
                     f" -> {a['sample_rate']} Hz mono, {a['seconds']} s, rms {a['rms']}")
    else:
        lines.append("  audio: none")
    if "faces" in report:
        f = report["faces"]
        lines.append(f"  faces: {f['tracks']} track(s); main face in {f['main_face_frames']}/{report['frames']['count']} "
                     f"frames; no face at frames {f['no_face_frames'] or 'none'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from emollm.cli.main import split_overrides

    args.clips, extra = split_overrides(args.clips)
    cfg = cfglib.load(args.config, [*extra, *args.overrides])
    if not args.clips:
        raise EmollmError("no clip given", hint="emollm probe CLIP [CLIP ...]")
    failed = 0
    for path in progress(args.clips, desc="probe", unit="clip"):
        try:
            report = probe_one(path, cfg, args.faces)
        except MediaError as exc:  # one bad clip does not stop the others
            failed += 1
            report = {"path": path, "ok": False, "error": exc.cause, "error_type": type(exc).__name__}
        except EmollmError:
            raise
        print(json.dumps(report, default=str) if args.json else _text(report))
    if failed:
        log.warning("%d of %d clip(s) could not be read", failed, len(args.clips))
    return 2 if failed else 0
