"""Helpers shared by the tiny-model builders."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


def seeded_init(model_class, config, seed: int):
    """``model_class(config)`` in float32 with weights that depend only on ``seed``.

    The caller's torch RNG state and default dtype are left as they were.
    """
    import torch

    previous_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.set_default_dtype(torch.float32)
        try:
            torch.manual_seed(seed)
            model = model_class(config)
        finally:
            torch.set_default_dtype(previous_dtype)
    return model.eval()


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: tuple[int, bool] | None = None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and warnings while building, then restore them.

    Re-entrant and thread-safe: the first caller in saves the settings, the last one out restores them.
    """
    global _quiet_depth, _quiet_saved
    from transformers.utils import logging as hf_logging

    with _quiet_lock:
        if _quiet_depth == 0:
            _quiet_saved = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is not None:
                verbosity, bars = _quiet_saved
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()
                _quiet_saved = None
