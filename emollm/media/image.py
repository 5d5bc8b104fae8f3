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


def decode_image(path: Path) -> tuple[np.ndarray, str]:
    """The image as uint8 (H, W, 3) RGB (EXIF orientation applied) and its format (``"jpeg"``, ...)."""
    with _pil_errors(path), Image.open(path) as im:
        fmt = (im.format or "unknown").lower()
        im.load()
        im = ImageOps.exif_transpose(im)
        rgb = im.convert("RGB")
        return np.asarray(rgb, dtype=np.uint8).copy(), fmt


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """A still image as uint8 (H, W, 3) RGB, EXIF orientation applied."""
    p = check_readable(path)
    return decode_image(p)[0]
