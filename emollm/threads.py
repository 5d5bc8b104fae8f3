"""Thread-pool limits for small torch models run inside a busy process (face detector, expression model)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def torch_threads(limit: int | None) -> Iterator[None]:
    """Cap torch's intra-op threads to ``limit`` for the block (never raises the count).

    Small convolutions gain nothing from sharing out, and on a busy 2-core machine 2 threads measured
    several times slower than 1 (spin-waiting); None leaves torch's setting."""
    import torch

    before = torch.get_num_threads()
    if limit and limit < before:
        torch.set_num_threads(limit)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
