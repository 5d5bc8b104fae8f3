"""Logging and progress conventions (see docs/conventions.md).

Library code logs through ``get_logger(__name__)`` and never prints; long loops go through
:func:`progress`, a tqdm bar on stderr that stays silent when stderr is not a terminal or
progress is disabled (``EMOLLM_PROGRESS=0`` or :func:`setup_logging(progress=False)`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_ROOT = "emollm"
_progress_enabled: bool | None = None  # None: decide from the environment / terminal


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``emollm`` hierarchy (``data_builders.x`` -> ``emollm.data_builders.x``)."""
    if name == _ROOT or name.startswith(_ROOT + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{_ROOT}.{name}")


class _DropCpuAcceleratorNotice(logging.Filter):
    """DeepSpeed warns on every CPU-only import (transformers imports it) that it fell back to CPU:
    expected on a CPU machine and not actionable, so the CLI drops it unless --debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU")


_ds_filter = _DropCpuAcceleratorNotice()


def setup_logging(level: int | str = logging.INFO, *, progress: bool | None = None) -> None:
    """Configure the ``emollm`` logger for command-line use: one stderr handler, short format."""
    global _progress_enabled
    logger = logging.getLogger(_ROOT)
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, "_emollm", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname).1s %(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._emollm = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
    # The filter survives DeepSpeed creating its logger later: loggers are singletons by name.
    ds_logger = logging.getLogger("DeepSpeed")
    if level in (logging.DEBUG, "DEBUG"):
        ds_logger.removeFilter(_ds_filter)
    else:
        ds_logger.addFilter(_ds_filter)
    # bitsandbytes' CPU backend warns on import (through peft) that an optional kernels package is
    # missing; without it QLoRA's 4-bit CPU matmuls take bnb's generic path. Shown under --debug only.
    logging.getLogger("bitsandbytes").setLevel(logging.DEBUG if level in (logging.DEBUG, "DEBUG") else logging.ERROR)
    if progress is not None:
        _progress_enabled = progress


def progress_enabled() -> bool:
    if _progress_enabled is not None:
        return _progress_enabled
    env = os.environ.get("EMOLLM_PROGRESS")
    if env is not None:
        return env.strip().lower() not in ("0", "false", "no", "off", "")
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap a long loop in a progress bar (stderr); a no-op wrapper when progress is off."""
    return iter(
        tqdm(iterable, desc=desc, total=total, unit=unit, disable=not progress_enabled(), file=sys.stderr, leave=False)
    )
