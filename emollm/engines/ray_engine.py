"""The ``ray`` engine: one Ray task per item, with a resource request, on a Ray cluster.

- ``address`` (``emollm ... --address HOST:PORT``, ``auto``, or ``RAY_ADDRESS``): a running cluster
  (``ray start --head`` on one node, ``ray start --address HEAD:6379`` on the others); None: a local Ray
  instance started for the run (``workers`` CPUs, default all of them) and shut down after it. Every
  node must import the same emollm (checked before the first task: a digest of the package sources on
  each node against the driver's) and see the same paths (clips, dataset, caches on a shared filesystem).
- Each task asks for ``Resources`` (``num_cpus``, ``num_gpus``): Ray places it on a node with them free;
  a GPU task sees its GPU(s) as ``cuda:0``... (Ray sets ``CUDA_VISIBLE_DEVICES``), a CPU task none.
- A worker (or node) that dies mid-task: Ray runs the task again (``max_retries``, default 3); after the
  last attempt the item comes back as :class:`~emollm.engines.Lost` and the run goes on. An exception the
  item's own code raises is not retried: it is raised in the driver, as the local engine would.
- The driver submits at most ``2 x`` what the cluster can run at once (its CPUs / GPUs over the request)
  and tops up as tasks finish, so 73k clips are never 73k pending tasks; ``workers`` with ``address``
  caps the tasks in flight instead.
- A driver that dies (``kill -9``): Ray kills the job's workers (an existing cluster) or the local
  instance goes down with it; whatever finished is on disk (the callers write atomically per item), and
  the same command again reuses it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from emollm.engines import ONE_CPU, Engine, Lost, Resources, Setup, process_identity, watch_driver
from emollm.errors import ConfigError, MissingDependencyError
from emollm.log import get_logger

log = get_logger(__name__)

CODE_PACKAGES = ("emollm", "data_builders", "eval")  # what a worker must share with the driver
_CODE_SUFFIXES = {".py", ".yaml", ".yml", ".csv", ".json"}
DEFAULT_MAX_RETRIES = 3


def code_digest(packages: Iterable[str] = CODE_PACKAGES) -> str:
    """SHA-256 over the source and data files of ``packages`` as this process imports them (paths
    relative to each package; ``__pycache__`` and a wheel's ``_data`` left out): equal on two machines
    when they run the same code."""
    import importlib.util

    h = hashlib.sha256()
    for name in packages:
        spec = importlib.util.find_spec(name)
        for root in (spec.submodule_search_locations or []) if spec else []:
            root = Path(root)
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if path.suffix not in _CODE_SUFFIXES or {"__pycache__", "_data"} & set(rel.parts) or not path.is_file():
                    continue
                h.update(f"{name}/{rel.as_posix()}\0".encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def _probe() -> tuple[str, str, str]:
    """On a worker: (host, emollm's folder, code digest)."""
    import emollm

    return socket.gethostname(), str(Path(emollm.__file__).resolve().parent), code_digest()


_SET_UP: set[tuple] = set()  # in a worker process: the setups already run


def _run_task(job: tuple[Callable[[Any], Any], Setup | None, int, tuple[str, int, str]], item: Any) -> Any:
    """A Ray task: the caller's ``setup`` once per worker process, then ``fn(item)`` (its writes stop if the
    driver dies: :func:`~emollm.engines.driver_gone`)."""
    fn, setup, threads, driver = job
    watch_driver(driver)
    if setup is not None:
        key = (getattr(setup, "__module__", None), getattr(setup, "__qualname__", repr(setup)), threads)
        if key not in _SET_UP:
            setup(threads, None)  # no parent to die with: the raylet owns the worker
            _SET_UP.add(key)
    return fn(item)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A ``HOST:PORT`` address must accept a TCP connection (``auto`` and ``ray://`` are Ray's to resolve)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"{address} does not answer ({err})") from None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("ray", "ray", "--engine ray") from None
    return ray


class RayEngine(Engine):
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, max_retries: int = DEFAULT_MAX_RETRIES,
                 max_in_flight: int | None = None, check_code: bool = True) -> None:
        if max_retries < 0:
            raise ConfigError(f"--max-retries must be >= 0, got {max_retries}")
        if workers is not None and workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        self.address = address
        self.workers = workers
        self.max_retries = int(max_retries)
        self.max_in_flight = max_in_flight or (workers if address else None)
        self.check_code = check_code
        self._owned = False  # this engine started the Ray instance (and shuts it down)
        self._checked = False

    # -- the cluster ---------------------------------------------------------------------------
    def start(self) -> Any:
        """Connect to (or start) Ray once; returns the ``ray`` module."""
        ray = _import_ray()
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
            self.address = self.address or os.environ.get("RAY_ADDRESS") or None  # as ray.init would read it
            try:
                if self.address:
                    _check_reachable(self.address)  # Ray itself retries an unreachable head for minutes
                    ray.init(address=self.address, **kw)
                else:  # this machine: its workers import the driver's code (a checkout on PYTHONPATH included)
                    import emollm

                    here = str(Path(emollm.__file__).resolve().parents[1])
                    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
                    ray.init(num_cpus=self.workers, runtime_env={"env_vars": {"PYTHONPATH": path}}, **kw)
            except ConnectionError as err:
                raise ConfigError(f"--engine ray: cannot reach the Ray cluster at {self.address!r}: {err}",
                                  hint="start it with `ray start --head` (its address is printed), or drop --address "
                                       "for a local Ray instance") from None  # fmt: skip
            self._owned = True
        if self.check_code and not self._checked:
            self._check_nodes(ray)
        return ray

    def _check_nodes(self, ray: Any) -> None:
        """Every node that runs tasks imports the driver's emollm (same sources): else the outputs could
        depend on the node, and the fingerprints computed here would not describe them."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        mine = code_digest()
        probe = ray.remote(_probe)
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
        refs = [probe.options(num_cpus=0, name="emollm-probe",
                              scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                for n in nodes]  # fmt: skip
        for node, (host, folder, digest) in zip(nodes, ray.get(refs), strict=True):
            if digest != mine:
                raise ConfigError(f"--engine ray: node {host} ({node.get('NodeManagerAddress')}) runs other emollm "
                                  f"code ({folder}, sources {digest[:12]}) than this driver (sources {mine[:12]})",
                                  hint="install the same emollm version on every node (one image / one shared venv)")
        self._checked = True

    def describe(self) -> str:
        ray = self.start()
        total = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        where = f"cluster at {self.address}" if self.address else ("a running Ray instance" if not self._owned
                                                                    else "a local Ray instance")
        gpus = f", {total['GPU']:g} GPUs" if total.get("GPU") else ""
        return f"ray, {where}: {nodes} node(s), {total.get('CPU', 0):g} CPUs{gpus}, max_retries {self.max_retries}"

    def close(self) -> None:
        if self._owned:
            ray = _import_ray()
            ray.shutdown()
            self._owned = False
            self._checked = False

    # -- the work ------------------------------------------------------------------------------
    def _in_flight(self, ray: Any, resources: Resources) -> int:
        if self.max_in_flight:
            return int(self.max_in_flight)
        total = ray.cluster_resources()
        slots = [total.get("CPU", 0.0) / resources.cpus]
        if resources.gpus:
            slots.append(total.get("GPU", 0.0) / resources.gpus)
        width = int(min(slots))
        if width < 1 and self._owned:  # the local instance started here: nothing will ever join it
            raise ConfigError(f"--engine ray: this machine's Ray instance has {total.get('CPU', 0):g} CPUs and "
                              f"{total.get('GPU', 0):g} GPUs; a task asks {resources.cpus:g} CPUs and "
                              f"{resources.gpus:g} GPUs", hint="ask less per task (--cpus-per-task / --gpus-per-task; "
                              "features.device=cpu), or join a cluster that has them (--address)")  # fmt: skip
        if width < 1:
            log.warning("ray: no node offers %s CPU(s) and %s GPU(s) per task now (cluster: %s); the tasks wait "
                        "until one joins", resources.cpus, resources.gpus, dict(total))  # fmt: skip
            width = 1
        return 2 * width  # a queue as deep as the cluster is wide: no worker waits for the driver

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, resources: Resources = ONE_CPU,
            setup: Setup | None = None, label: str = "emollm") -> Iterator[tuple[int, Any]]:
        items = list(items)
        if not items:
            return
        ray = self.start()
        task = ray.remote(_run_task).options(name=label, num_cpus=resources.cpus, num_gpus=resources.gpus,
                                              max_retries=self.max_retries, retry_exceptions=False)
        job = ray.put((fn, setup, resources.threads, process_identity()))  # shipped once, shared by every task
        cap = self._in_flight(ray, resources)
        pending: dict[Any, int] = {}
        following = 0
        try:
            while following < len(items) or pending:
                while following < len(items) and len(pending) < cap:
                    pending[task.remote(job, items[following])] = following
                    following += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), self._result(ray, ref)
        finally:  # the caller stopped early (an error, Ctrl-C): cancel what has not finished
            for ref in pending:
                ray.cancel(ref, force=True)

    def _result(self, ray: Any, ref: Any) -> Any:
        exc = ray.exceptions
        lost = tuple(getattr(exc, n) for n in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError",
                                               "ObjectLostError", "TaskUnschedulableError") if hasattr(exc, n))
        try:
            return ray.get(ref)
        except exc.RayTaskError as err:  # the item's own code raised: as a local call would
            cause = getattr(err, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from err
            raise err.as_instanceof_cause() from None
        except lost as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            return Lost(type(err).__name__, reason, attempts=self.max_retries + 1)


__all__ = ["CODE_PACKAGES", "DEFAULT_MAX_RETRIES", "RayEngine", "code_digest"]
