"""Frame sampling and decoding.

Frame index ``i`` is the ``i``-th frame the decoder outputs (presentation order, frames cut by an
edit list excluded), matching :attr:`MediaInfo.num_frames`. Decoding is sequential from the
start, keeping only the wanted frames and stopping once the last one is reached: exact (no
seek-to-keyframe approximation) and fast enough for the short clips of emotion datasets.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from emollm.errors import (
    CorruptMediaError,
    EmptyMediaError,
    FrameSamplingError,
    NoVideoStreamError,
    UnsupportedCodecError,
)
from emollm.log import get_logger
from emollm.media._io import open_container, scaled_size, translate_av_error
from emollm.media.probe import MediaInfo, probe

logger = get_logger(__name__)


@dataclass(eq=False)
class Frames:
    """Decoded frames: ``array`` is uint8 (T, H, W, 3) RGB; ``indices`` the source frame index of
    each row (in request order, repeats allowed); ``timestamps_s`` each frame's presentation time
    in seconds from the start of the video stream."""

    array: np.ndarray
    indices: list[int]
    timestamps_s: list[float]

    def __len__(self) -> int:
        return len(self.indices)


def sample_frame_indices(
    num_frames_total: int,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    src_fps: float | None = None,
    indices: Sequence[int] | None = None,
    path: str | os.PathLike[str] | None = None,
) -> list[int]:
    """Which frames to read from a clip of ``num_frames_total`` frames. Pass exactly one of:

    - ``num_frames``: uniform sampling, the centre frame of each of ``num_frames`` equal segments
      (deterministic; when ``num_frames`` exceeds the clip length frames repeat, so the count is
      always exactly ``num_frames``);
    - ``fps`` (with the clip's ``src_fps``): one frame every ``1/fps`` seconds from the start, each
      source frame at most once (asking for more than the source rate gives every frame);
    - ``indices``: explicit 0-based indices, returned as given after a range check.

    ``path`` only names the clip in error messages. Raises FrameSamplingError (also a ValueError).
    """
    where = path if path is not None else "frame sampling"
    given = [
        name for name, value in (("num_frames", num_frames), ("fps", fps), ("indices", indices)) if value is not None
    ]
    if len(given) != 1:
        raise FrameSamplingError(where, f"pass exactly one of num_frames / fps / indices (got {given or 'none'})")
    if not isinstance(num_frames_total, numbers.Integral) or num_frames_total < 1:
        raise FrameSamplingError(where, f"cannot sample frames from a clip of {num_frames_total!r} frames")
    total = int(num_frames_total)

    if indices is not None:
        bad_type = [i for i in indices if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
        if bad_type:
            raise FrameSamplingError(where, f"frame indices must be integers, got {bad_type[:10]}")
        out = [int(i) for i in indices]
        if not out:
            raise FrameSamplingError(where, "the list of frame indices is empty")
        bad = [i for i in out if not 0 <= i < total]
        if bad:
            more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
            raise FrameSamplingError(
                where,
                f"frame indices out of range for a clip of {total} frames (valid 0..{total - 1}): {bad[:10]}{more}",
            )
        return out

    if num_frames is not None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 1:
            raise FrameSamplingError(where, f"num_frames must be a positive integer, got {num_frames!r}")
        n = int(num_frames)
        # Centre of segment k of n equal segments over [0, total): floor((k + 1/2) * total / n), in integers.
        return [((2 * k + 1) * total) // (2 * n) for k in range(n)]

    assert fps is not None
    if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise FrameSamplingError(where, f"fps must be a positive number, got {fps!r}")
    if not (isinstance(src_fps, numbers.Real) and math.isfinite(src_fps) and src_fps > 0):
        raise FrameSamplingError(
            where, f"sampling at a target fps needs the clip's frame rate (src_fps), got {src_fps!r}"
        )
    step = float(src_fps) / float(fps)
    if step <= 1.0:
        return list(range(total))
    out = []
    k = 0
    while True:
        # The small epsilon keeps exact multiples (30 fps -> 10 fps: 0, 3, 6, ...) from rounding down.
        i = math.floor(k * step + 1e-6)
        if i >= total:
            return out
        out.append(i)
        k += 1


def read_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int] | None = None,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_side: int | None = None,
) -> Frames:
    """Decode frames of a video (or a still image, one frame) as uint8 RGB.

    Give at most one of ``indices`` / ``num_frames`` / ``fps`` (see :func:`sample_frame_indices`);
    none of them reads every frame. ``max_side`` downscales so the longer side is at most that
    many pixels. A still image always gives its one frame (index 0) unless ``indices`` asks for
    something else. Raises NoVideoStreamError for audio-only files, CorruptMediaError when a
    requested frame cannot be decoded (truncated file, decode error mid-stream).
    """
    return read_frames_from(probe(path), indices, num_frames=num_frames, fps=fps, max_side=max_side)


def read_frames_from(
    info: MediaInfo,
    indices: Sequence[int] | None = None,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_side: int | None = None,
    on_frame: Callable[[int, np.ndarray], None] | None = None,
) -> Frames:
    """:func:`read_frames` for a file already probed (saves the probe pass).

    ``on_frame(index, frame)`` is called as each requested frame is decoded, in decode order
    (:class:`FrameStream` reads the frames while the decode goes on)."""
    path = Path(info.path)
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    if not info.has_video:
        if "video" in info.unsupported_streams:
            raise UnsupportedCodecError(path, "the video stream uses a codec this PyAV/FFmpeg build cannot decode")
        raise NoVideoStreamError(path, f"no video stream ({info.kind}-only file); frames cannot be read")
    if info.num_frames < 1:
        raise EmptyMediaError(path, "the video stream holds no frames")

    if info.kind == "image" and indices is None:
        wanted = [0]  # a still image is a one-frame clip whatever the sampling asks
    elif indices is None and num_frames is None and fps is None:
        wanted = list(range(info.num_frames))
    else:
        wanted = sample_frame_indices(
            info.num_frames, num_frames=num_frames, fps=fps, src_fps=info.fps, indices=indices, path=path
        )

    if info.kind == "image" and info.video_stream is None:  # read by Pillow
        from emollm.media.image import read_image

        image = read_image(path)
        w, h = scaled_size(image.shape[1], image.shape[0], max_side)
        if (w, h) != (image.shape[1], image.shape[0]):
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BOX))
        array = np.repeat(image[None], len(wanted), axis=0)
        if on_frame is not None:
            for i in dict.fromkeys(wanted):
                on_frame(i, image)
        return Frames(array=array, indices=wanted, timestamps_s=[0.0] * len(wanted))
    return _decode(info, wanted, max_side, on_frame)


decode_threads = 0  # FFmpeg's decoder threads per decode: 0 its choice; a build pool worker sets its share of the cores


def set_decode_threads(n: int) -> None:
    """FFmpeg decoder threads for this process's decodes (0: FFmpeg's choice, the CPUs + 1). A pool of N
    build workers sets each one's share of the cores (``data_builders.pool.worker_init``): its processes
    are the parallelism, and N x (CPUs + 1) decoder threads would fight over the cores."""
    global decode_threads
    if n < 0:
        raise ValueError(f"decoder threads must be >= 0, got {n}")
    decode_threads = int(n)


def _decode(info: MediaInfo, indices: list[int], max_side: int | None,
            on_frame: Callable[[int, np.ndarray], None] | None = None) -> Frames:
    path = Path(info.path)
    wanted = set(indices)
    last = max(indices)
    got: dict[int, np.ndarray] = {}
    times: dict[int, float] = {}
    decoded = 0
    out_size: tuple[int, int] | None = (
        scaled_size(info.width, info.height, max_side) if info.width and info.height else None
    )
    with open_container(path) as container:
        stream = container.streams[info.video_stream]
        stream.thread_type = "AUTO"  # frame + slice threads; frames still come out in order
        stream.codec_context.thread_count = decode_threads  # 0: FFmpeg's choice (the CPUs + 1)
        # one swscale context for the clip: frame.to_ndarray(width=...) builds a new one per frame
        # (~30 % of the conversion's time); same filter, same pixels
        reformatter = VideoReformatter()
        start = stream.start_time or 0
        time_base = stream.time_base
        try:
            for frame in container.decode(stream):
                i = decoded
                decoded += 1
                if i in wanted:
                    if out_size is None:
                        out_size = scaled_size(frame.width, frame.height, max_side)
                    # One swscale call converts to RGB and (if asked) resizes; every frame comes out
                    # at the same size even if the stream changes resolution mid-way.
                    got[i] = reformatter.reformat(
                        frame, width=out_size[0], height=out_size[1], format="rgb24", interpolation="AREA"
                    ).to_ndarray()
                    if frame.pts is not None and time_base is not None:
                        times[i] = float((frame.pts - start) * time_base)
                    else:
                        times[i] = i / info.fps if info.fps else 0.0
                    if on_frame is not None:
                        on_frame(i, got[i])
                if i >= last:
                    break
        except av.FFmpegError as e:
            raise translate_av_error(e, path, f"decoding video (after {decoded} frames)") from e

    missing = sorted(wanted - got.keys())
    if missing:
        raise CorruptMediaError(
            path,
            f"the video stream ended after {decoded} decoded frames, but frame(s) {missing[:10]} were "
            f"requested (the container lists {info.num_frames}); the file is truncated or damaged",
        )
    logger.debug("%s: decoded %d frames, kept %d", path, decoded, len(wanted))
    array = np.stack([got[i] for i in indices])
    return Frames(array=array, indices=list(indices), timestamps_s=[times[i] for i in indices])


class _Stopped(Exception):
    """Raised inside the decode loop of a closed :class:`FrameStream` to end it early."""


class FrameStream:
    """The frames :func:`read_frames_from` gives for ``indices``, decoded in a background thread.

    ``stream[p]`` waits for row ``p`` only, so a consumer that walks the frames in order (the face
    track) starts on the first ones while the rest decode. FFmpeg and the detectors release the GIL,
    so one clip's decode and face track overlap: less wall time for one clip (``emollm infer``), the
    same CPU time. :meth:`result` is the :class:`Frames` of a plain :func:`read_frames_from` call,
    pixels included; a decode error is raised by the row access that waits for a missing frame and
    by :meth:`result`. :meth:`close` ends the decode early (use the stream in a ``with`` block).
    ``background=False`` decodes in the constructor instead (no thread; what a pool worker wants, whose
    cores are already busy with other clips).
    """

    def __init__(self, info: MediaInfo, indices: Sequence[int], *, max_side: int | None = None,
                 background: bool = True) -> None:
        self.indices = [int(i) for i in indices]
        self._got: dict[int, np.ndarray] = {}
        self._cond = threading.Condition()
        self._done = False
        self._stop = False
        self._error: BaseException | None = None
        self._frames: Frames | None = None
        self._thread: threading.Thread | None = None
        if not background:  # decoded here and now: the same object for a caller that wants no thread
            self._run(info, max_side)
            return
        self._thread = threading.Thread(target=self._run, args=(info, max_side), name="emollm-decode", daemon=True)
        self._thread.start()

    def _put(self, index: int, frame: np.ndarray) -> None:
        with self._cond:
            if self._stop:
                raise _Stopped
            self._got[index] = frame
            self._cond.notify_all()

    def _run(self, info: MediaInfo, max_side: int | None) -> None:
        frames, error = None, None
        try:
            frames = read_frames_from(info, self.indices, max_side=max_side, on_frame=self._put)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, raised there
            error = exc
        with self._cond:
            self._frames, self._error, self._done = frames, error, True
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int) -> np.ndarray:
        index = self.indices[pos]
        with self._cond:
            while index not in self._got and not self._done:
                self._cond.wait()
            if index in self._got:
                return self._got[index]
            raise self._error or RuntimeError("the frame stream was closed before this frame was decoded")

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[p] for p in range(len(self)))

    def rows(self, positions: Sequence[int], *, indices: Sequence[int] | None = None) -> FrameRows:
        """A lazy view of rows ``positions`` (``indices``: the source indices it reports, if any)."""
        return FrameRows(self, list(positions), None if indices is None else list(indices))

    def result(self) -> Frames:
        """All the frames, once decoded (waits); raises the decode's error."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._frames is not None
        return self._frames

    def close(self) -> None:
        with self._cond:
            self._stop = True
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class FrameRows(Sequence):
    """Some rows of a :class:`FrameStream`, read lazily (the face track takes it as its frames)."""

    stream: FrameStream
    positions: list[int]
    indices: list[int] | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> np.ndarray:  # type: ignore[override]
        return self.stream[self.positions[k]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[k] for k in range(len(self)))
