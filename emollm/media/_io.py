"""Private helpers shared by the media modules: path checks and PyAV / Pillow error mapping.

Every failure that reaches a caller of :mod:`emollm.media` is one of the typed
:class:`~emollm.errors.MediaError` subclasses, whose message names the file and the cause.
Raw ``av`` / ``PIL`` exceptions never leak: they are translated here (the original is kept as
``__cause__`` for ``--debug`` tracebacks).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av

from emollm.errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaNotFoundError,
    UnsupportedCodecError,
)

# Still images go through Pillow (EXIF orientation, palette / alpha handling); everything else
# through PyAV. The extension decides; a still image with another extension that FFmpeg
# recognises as an image (e.g. ``png_pipe``) is still reported as kind "image".
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def _open_for_read(path: Path) -> None:
    """Open and close ``path`` for reading; raises the OSError the OS gives (PermissionError ...)."""
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)


def check_readable(path: str | os.PathLike[str]) -> Path:
    """The path as a :class:`Path` once it is known to be a readable, non-empty regular file.

    Raises MediaNotFoundError (missing, a directory, not a regular file, no permission) or
    EmptyMediaError (0 bytes). Done before PyAV sees the file so that the causes are precise.
    """
    p = Path(os.fspath(path))
    try:
        st = p.stat()
    except FileNotFoundError:
        raise MediaNotFoundError(p, "no such file") from None
    except PermissionError:
        raise MediaNotFoundError(p, "permission denied (a parent folder cannot be searched)") from None
    except OSError as e:
        raise MediaNotFoundError(p, f"cannot access the file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise MediaNotFoundError(p, "is a directory, not a media file")
    if not stat.S_ISREG(st.st_mode):
        raise MediaNotFoundError(p, "is not a regular file")
    try:
        _open_for_read(p)
    except PermissionError:
        raise MediaNotFoundError(p, "permission denied: the file cannot be read") from None
    except OSError as e:
        raise MediaNotFoundError(p, f"cannot open the file for reading ({e.strerror or e})") from None
    if st.st_size == 0:
        raise EmptyMediaError(p, "file is empty (0 bytes)")
    return p


def _av_reason(e: BaseException) -> str:
    # FFmpegError.strerror is FFmpeg's text ("Invalid data found when processing input");
    # str(e) would repeat the errno and the file name.
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def translate_av_error(e: BaseException, path: str | os.PathLike[str], action: str) -> MediaError:
    """The typed MediaError for a PyAV error ``e`` raised while doing ``action`` on ``path``."""
    if isinstance(e, MediaError):
        return e
    if isinstance(e, av.error.DecoderNotFoundError):
        return UnsupportedCodecError(path, f"{action}: no decoder for this codec in this PyAV/FFmpeg build")
    if isinstance(e, av.error.PermissionError):
        return MediaNotFoundError(path, f"{action}: permission denied")
    if isinstance(e, (av.error.FileNotFoundError, av.error.IsADirectoryError, av.error.NotADirectoryError)):
        return MediaNotFoundError(path, f"{action}: {_av_reason(e)}")
    if isinstance(e, av.error.InvalidDataError):
        what = "not a media file, or the file is corrupt or truncated" if action == "cannot open" else "corrupt data"
        return CorruptMediaError(path, f"{action}: {_av_reason(e)} ({what})")
    if isinstance(e, av.error.EOFError):
        return CorruptMediaError(path, f"{action}: unexpected end of file (truncated?)")
    return CorruptMediaError(path, f"{action}: {_av_reason(e)}")


@contextmanager
def av_errors(path: str | os.PathLike[str], action: str) -> Iterator[None]:
    """Translate PyAV errors raised inside the block into typed MediaErrors.

    ``action`` says what was being done ("cannot open", "decoding audio", ...) and prefixes the cause.
    """
    try:
        yield
    except av.FFmpegError as e:
        raise translate_av_error(e, path, action) from e


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) shrunk so that the longer side is at most ``max_side`` (never enlarged)."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def open_container(path: Path) -> av.container.InputContainer:
    """Open ``path`` with PyAV for reading, errors translated. Close it (``with``) when done."""
    with av_errors(path, "cannot open"):
        # Undecodable metadata (tags in a legacy encoding) must not make a clip unreadable.
        return av.open(str(path), mode="r", metadata_errors="replace")


def is_attached_picture(stream: av.stream.Stream) -> bool:
    """Cover art in an audio file (mp3 / m4a) shows up as a one-frame video stream: not video."""
    return bool(stream.disposition & av.stream.Disposition.attached_pic)
