"""The ``local`` engine: this process, or a process pool on this machine (the default; no extra)."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from emollm.engines import ONE_CPU, Engine, Resources, Setup


class LocalEngine(Engine):
    """``workers`` <= 1 (or a single item): every item in the calling process, in order, ``setup`` not
    called (the caller's process is already set up). More: a pool of ``workers`` processes, *spawned*
    (the items run torch, whose thread pool hangs in a child forked after the parent used it; each
    worker imports once), each given its share of the CPUs (``setup(cpus // workers, this pid)``)."""

    name = "local"

    def __init__(self, workers: int | None = 1) -> None:
        self.workers = max(1, int(workers or 1))

    def describe(self) -> str:
        return "local, in process" if self.workers <= 1 else f"local, {self.workers} worker processes"

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, resources: Resources = ONE_CPU,
            setup: Setup | None = None, label: str = "emollm") -> Iterator[tuple[int, Any]]:
        items = list(items)
        if self.workers <= 1 or len(items) <= 1:
            for index, item in enumerate(items):
                yield index, fn(item)
            return
        ctx = multiprocessing.get_context("spawn")
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        kw: dict[str, Any] = {"initializer": setup, "initargs": (threads, os.getpid())} if setup else {}
        with cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, **kw) as pool:
            futures = {pool.submit(fn, item): index for index, item in enumerate(items)}
            try:
                for fut in cf.as_completed(futures):
                    yield futures[fut], fut.result()
            finally:  # the caller stopped early (an error, Ctrl-C): start nothing more
                for fut in futures:
                    fut.cancel()


__all__ = ["LocalEngine"]
