"""Still images (jpg / png / bmp / webp) through Pillow, treated as one-frame clips.

The EXIF orientation is applied (phone photos are stored sideways), palette / grey / alpha
images are converted to RGB (alpha is dropped, not composited).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from emollm.errors import CorruptMediaError, MediaError, MediaNotFoundError
from emollm.media._io import check_readable
from emollm.media.probe import MediaInfo


@contextmanager
def _pil_errors(path: Path) -> Iterator[None]:
    """Translate Pillow's many failure types (it also raises SyntaxError / ValueError on bad data)."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors) on huge images; make the warning an error we report.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except MediaError:
        raise
    except UnidentifiedImageError as e:
        raise CorruptMediaError(path, "not an image Pillow can read (corrupt file or wrong extension)") from e
    except PermissionError as e:
        raise MediaNotFoundError(path, "permission denied: the file cannot be read") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise CorruptMediaError(path, f"image too large to decode safely ({e})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # "image file is truncated", "broken PNG file", ...
        raise CorruptMediaError(path, f"cannot decode the image: {e}") from e


def _load_rgb(path: Path) -> tuple[np.ndarray, str]:
    with _pil_errors(path), Image.open(path) as im:
        fmt = (im.format or "unknown").lower()
        im.load()
        im = ImageOps.exif_transpose(im)
        rgb = im.convert("RGB")
        return np.asarray(rgb, dtype=np.uint8).copy(), fmt


def probe_image(path: str | os.PathLike[str]) -> MediaInfo:
    """Probe a still image. The image is fully decoded so that a truncated file fails here."""
    p = check_readable(path)
    array, fmt = _load_rgb(p)
    return MediaInfo(
        path=str(p),
        kind="image",
        duration_s=0.0,
        has_video=True,
        has_audio=False,
        num_frames=1,
        width=int(array.shape[1]),
        height=int(array.shape[0]),
        video_codec=fmt,
        container=fmt,
    )


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """A still image as uint8 (H, W, 3) RGB, EXIF orientation applied."""
    p = check_readable(path)
    return _load_rgb(p)[0]
