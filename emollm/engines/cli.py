"""The engine options of ``emollm build`` and ``emollm features`` (one definition for both)."""

from __future__ import annotations

import argparse

from emollm.engines import Engine, engine_names, get_engine
from emollm.engines.ray_engine import DEFAULT_MAX_RETRIES  # Ray itself is imported only when the engine starts
from emollm.errors import ConfigError


def add_engine_arguments(parser: argparse.ArgumentParser, *, gpus: bool = False) -> None:
    """``--engine``, ``--address``, ``--cpus-per-task`` (``--gpus-per-task`` with ``gpus``), ``--max-retries``."""
    group = parser.add_argument_group("engine (where the clips run; docs/scale.md)")
    group.add_argument("--engine", choices=engine_names(), default="local",
                       help="local: this process, or --workers processes; ray: one Ray task per clip (build) or "
                            "batch (features); pip install 'emollm[ray]'")  # fmt: skip
    group.add_argument("--address", default=None, metavar="HOST:PORT",
                       help="ray: the running cluster to use (`ray start --head` prints it; 'auto' finds one on this "
                            "node); unset: RAY_ADDRESS, else a local Ray instance for this run")  # fmt: skip
    group.add_argument("--cpus-per-task", type=float, default=1.0, metavar="N",
                       help="ray: CPUs each task asks for (also its torch / decoder threads)")
    if gpus:
        group.add_argument("--gpus-per-task", type=float, default=None, metavar="N",
                           help="ray: GPUs each task asks for, its encoders run there (unset: 1 when features.device "
                                "is cuda, else 0; 0.25: four tasks share a GPU)")  # fmt: skip
    group.add_argument("--max-retries", type=int, default=DEFAULT_MAX_RETRIES, metavar="N",
                       help="ray: runs of a task whose worker died, before its clips are recorded as failed")


def engine_from_args(args: argparse.Namespace, *, local_workers: int | None = None) -> Engine:
    """The engine the command line asks for (checked: ray's options need ``--engine ray``). ``local_workers``:
    the local engine's processes (the command's default applied); a local Ray instance gets ``--workers``
    CPUs when given, else all of them."""
    ray_only = {"--address": args.address is not None, "--cpus-per-task": args.cpus_per_task != 1.0,
                "--gpus-per-task": getattr(args, "gpus_per_task", None) is not None,
                "--max-retries": args.max_retries != DEFAULT_MAX_RETRIES}
    given = [flag for flag, value in ray_only.items() if value]
    if args.engine == "local":
        if given:
            raise ConfigError(f"{', '.join(given)} go(es) with --engine ray", hint="add --engine ray, or drop them")
        return get_engine("local", workers=local_workers)
    if args.cpus_per_task <= 0:
        raise ConfigError(f"--cpus-per-task must be > 0, got {args.cpus_per_task}")
    if getattr(args, "gpus_per_task", None) is not None and args.gpus_per_task < 0:
        raise ConfigError(f"--gpus-per-task must be >= 0, got {args.gpus_per_task}")
    return get_engine(args.engine, address=args.address, workers=getattr(args, "workers", None),
                      max_retries=args.max_retries)


__all__ = ["add_engine_arguments", "engine_from_args"]
