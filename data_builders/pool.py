"""Pool workers that die with their build.

A ``kill -9`` of ``emollm build --workers N`` would otherwise leave its spawned workers running (PPID 1,
hundreds of MB each), still writing parts beside a rerun. Each worker, first thing (this module
imports nothing heavy, so it runs before the worker imports torch), asks Linux to SIGKILL it when the
build dies (prctl PR_SET_PDEATHSIG), and everywhere checks before each file it writes that its parent
is still the build (:func:`stop_if_orphaned`).

:func:`worker_init` is the builder's and the feature extractor's ``setup`` for every engine
(:mod:`emollm.engines`): a local pool calls it with the build's pid; a Ray worker with ``parent_pid``
None (its raylet owns it), so only the thread shares are set; there :func:`stop_if_orphaned` checks
the driver instead, when it ran on the worker's host (Ray itself ends a dead driver's tasks elsewhere).
"""

from __future__ import annotations

import os
import sys

from emollm.engines import driver_gone  # light: no torch

_PARENT_PID: int | None = None  # set in a pool worker: the build process that started it


def die_with_parent(parent_pid: int) -> None:
    global _PARENT_PID
    _PARENT_PID = parent_pid
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # no prctl in this libc: the checks below still hold
            pass
    stop_if_orphaned()  # the build may have died before the prctl took effect


def parent_gone() -> bool:
    return _PARENT_PID is not None and os.getppid() != _PARENT_PID


def stop_if_orphaned() -> None:
    """In a pool worker whose build died, or a cluster's worker whose driver on this host died
    (:func:`emollm.engines.driver_gone`): exit at once, writing nothing more (a no-op elsewhere)."""
    if parent_gone() or driver_gone():
        os._exit(1)


def worker_init(torch_threads: int, parent_pid: int | None = None) -> None:
    """Worker start: die with the build; torch (whisper) and FFmpeg's decoder share the cores with the
    other workers (``torch_threads`` each: the CPUs / workers) instead of each taking all."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    if torch_threads:
        import torch

        from emollm.media.video import set_decode_threads

        torch.set_num_threads(torch_threads)
        set_decode_threads(torch_threads)


__all__ = ["die_with_parent", "parent_gone", "stop_if_orphaned", "worker_init"]
