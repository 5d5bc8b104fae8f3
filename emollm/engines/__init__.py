"""Execution engines: where the builder's clips and the feature extractor's batches run.

One seam, two entries registered by name:

- ``local`` (:class:`~emollm.engines.local.LocalEngine`, the default, no extra dependency): the calling
  process, or a spawned process pool of ``workers`` on this machine;
- ``ray`` (:class:`~emollm.engines.ray_engine.RayEngine`, ``pip install 'emollm[ray]'``): one Ray task per
  item, with a resource request (CPUs, GPUs), retried by Ray when its worker dies, on a Ray cluster
  (``address``) or a local one started for the run.

The callers (``data_builders.runner.build``, ``emollm.features.extract.extract_features``) keep every
per-item step and every file write: an engine only runs ``fn(item)`` somewhere and hands the results
back as they finish, so the outputs do not depend on the engine. ``fn`` must be picklable for any
engine that leaves the process (a module-level function, or a ``functools.partial`` of one).

    from emollm.engines import Resources, get_engine
    with get_engine("ray", address="auto") as engine:
        for index, result in engine.map(fn, items, resources=Resources(cpus=1), setup=worker_init):
            ...  # result is fn(items[index]), or a Lost when the engine gave up on the item

``setup(threads, parent_pid)`` (optional) runs once in each worker process before its first item:
``threads`` is the worker's share of the CPUs, ``parent_pid`` the calling process when the worker is
its child (a local pool: the worker should die with it), None when a cluster manages the worker.

This module imports nothing heavy (a spawned pool worker imports it before torch): the entries are
imported when they are asked for.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emollm.errors import ConfigError

Setup = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class Resources:
    """What one task asks of the engine: CPUs (its torch / decoder threads too) and GPUs (fractions
    share a GPU). The local engine runs one item per worker process and ignores the request."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus <= 0 or self.gpus < 0:
            raise ConfigError(f"task resources: need cpus > 0 and gpus >= 0, got cpus={self.cpus}, gpus={self.gpus}")

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


ONE_CPU = Resources()  # the default request: one CPU, no GPU


@dataclass(frozen=True)
class Lost:
    """An item the engine gave up on: its worker (or node) died on every attempt. ``attempts`` counts
    them (1 + the retries); ``reason`` is the engine's own message, first line."""

    error_type: str
    reason: str
    attempts: int = 1


class Engine:
    """An execution engine (subclass and register it with :func:`register_engine`)."""

    name: str = ""

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, resources: Resources = ONE_CPU,
            setup: Setup | None = None, label: str = "emollm") -> Iterator[tuple[int, Any]]:
        """``fn(item)`` for every item, as ``(index, result)`` in the order they finish; ``result`` is a
        :class:`Lost` for an item the engine gave up on (its worker kept dying). An exception ``fn``
        raises is raised here, as a local call would. ``label`` names the tasks (process titles)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the log: the engine and where it runs."""
        return self.name

    def close(self) -> None:
        """Release what the engine started (a local Ray instance); idempotent."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ the driver, from a worker

_DRIVER: tuple[str, int, str] | None = None  # in a cluster's worker: the driver of the task in hand


def process_identity(pid: int | None = None) -> tuple[str, int, str]:
    """(host, pid, start time) of a process (this one by default): names it even after its pid is reused."""
    pid = os.getpid() if pid is None else pid
    return socket.gethostname(), pid, _start_time(pid) or ""


def _start_time(pid: int) -> str | None:
    """The process's start time (Linux: /proc, in clock ticks since boot); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc here: alive or not, by signal 0
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        return ""
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]  # zombie / dead: gone; field 22 = starttime


def watch_driver(identity: tuple[str, int, str] | None) -> None:
    """In a worker a cluster manages (not the driver's child): remember the driver of its current task."""
    global _DRIVER
    _DRIVER = identity


def driver_gone() -> bool:
    """In such a worker, on the driver's host: True once the driver died (a worker on another host cannot
    tell: there the cluster ends a dead driver's tasks). Checked before each file an item writes
    (``data_builders.pool.stop_if_orphaned``), so no output is written beside a rerun of the command."""
    if _DRIVER is None:
        return False
    host, pid, started = _DRIVER
    return host == socket.gethostname() and _start_time(pid) != started


_REGISTRY: dict[str, Callable[..., Engine] | str] = {}


def register_engine(name: str, factory: Callable[..., Engine] | str) -> None:
    """Register an engine: ``factory(**options)`` returns it; a ``"module:attribute"`` string is imported
    only when the engine is asked for (so an optional dependency costs nothing until then)."""
    _REGISTRY[name] = factory


def engine_names() -> list[str]:
    return sorted(_REGISTRY)


def get_engine(name: str | Engine | None = None, **options: Any) -> Engine:
    """The engine ``name`` (None: ``local``) made with ``options`` (each engine's own: ``workers``;
    ``address``, ``max_retries``, ... for ray). An :class:`Engine` is returned as it is."""
    if isinstance(name, Engine):
        return name
    name = name or "local"
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"unknown engine {name!r}", hint=f"choose one of: {', '.join(engine_names())}")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(**options)


register_engine("local", "emollm.engines.local:LocalEngine")
register_engine("ray", "emollm.engines.ray_engine:RayEngine")

__all__ = ["ONE_CPU", "Engine", "Lost", "Resources", "Setup", "driver_gone", "engine_names", "get_engine",
           "process_identity", "register_engine", "watch_driver"]
