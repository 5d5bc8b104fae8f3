"""The timing protocol every benchmark under benchmarks/ shares (one helper, one way to measure a ratio).

    from protocol import setup_threads, compare, header, format_result   # in a script run as benchmarks/x.py

- ``setup_threads(n)`` fixes torch's thread count, OMP/MKL_NUM_THREADS and OMP_WAIT_POLICY (PASSIVE unless
  already set: spinning OpenMP workers steal the other side's cores on a shared machine) before timing.
- ``compare(sides)`` runs the sides interleaved, one call of each per round, in an order that rotates every
  round (A B, B A, A B, ... for two sides) so neither is always first; the first ``warmup`` rounds are
  discarded. Each side gets its median, min, max and IQR; each ratio (the first side over each other one)
  is computed per round, A_i / B_i, so the two timings of a ratio share the machine's state at that moment,
  and reported as the median of those with its min, max and IQR. A noise burst that hits one side in one
  round moves one per-round ratio, not the median.
- ``StageTimer`` splits one timed run into stages (exclusive wall time per wrapped entry point, a nested
  stage not counted twice); ``timer.patched([(module, "name", "stage"), ...])`` wraps them for a block.
- ``pinned_cpus(n)`` runs a block on n CPUs (sched_setaffinity): sides whose native threads differ (FFmpeg's
  decoder threads against a one-thread baseline) then share the same cores, and the VM's other CPU stops
  adding its own scatter to the ratio.
- ``header()`` / ``format_result()`` print the settings (threads, OMP_WAIT_POLICY, torch version, CPUs) and
  the result, so every figure in benchmarks/README.md carries how it was measured.
- Every ratio carries the 95 % confidence interval of its median (``median_ci95``, distribution-free).
  ``compare(..., until_ci=0.015)`` keeps adding rounds until each ratio's interval is that narrow (or a
  round / time cap is hit, and says so): the rule that makes a re-run agree to +-0.03, at whatever number
  of rounds the machine's noise needs (``--until-ci`` / ``--max-minutes`` in the scripts).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator

WARMUP = 2
REPEATS = 7


def setup_threads(n: int | None = None) -> dict:
    """Fix the thread settings for timing; returns them (``header`` prints the same)."""
    import torch

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if n is not None and n > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(n)
        torch.set_num_threads(n)
        _limit_native_pools(n)
    return settings()


_POOL_LIMITS: list = []  # threadpoolctl's limiter, kept alive for the process


def _limit_native_pools(n: int) -> None:
    """numpy's OpenBLAS and other native pools are sized when first loaded, before the variables above
    are read: cap them in place (threadpoolctl, when installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    _POOL_LIMITS.append(threadpool_limits(limits=n))


@contextlib.contextmanager
def pinned_cpus(n: int | None) -> Iterator[set[int] | None]:
    """Run the block on ``n`` CPUs of those this process may use (the last ones: on a VM the first takes
    more interrupts), restoring the affinity after; yields the CPUs pinned to (None: not pinned, where
    ``n`` is None or the platform has no ``sched_setaffinity``). FFmpeg's decoder threads and every
    thread started inside follow it, so two sides that thread differently get the same cores."""
    if n is None or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    cpus = os.sched_getaffinity(0)
    if n < 1 or n > len(cpus):
        raise ValueError(f"cannot pin to {n} CPU(s): this process may use {len(cpus)}")
    pinned = set(sorted(cpus)[-n:])
    os.sched_setaffinity(0, pinned)
    try:
        yield pinned
    finally:
        os.sched_setaffinity(0, cpus)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_STEADY_MALLOC: dict = {}


def steady_malloc(mmap_threshold: int = 32 << 20) -> bool:
    """Keep freed memory in the process (glibc): blocks up to ``mmap_threshold`` (glibc's largest, 32 MB)
    come from the heap instead of fresh ``mmap`` s, and the heap is never trimmed. A side that allocates
    hundreds of MB per call (a decode-everything baseline) then reuses pages it already touched, instead of
    page-faulting them in again each round, whose cost scatters with the host (measured: 330-600 ms for
    the same call). Applies to both sides alike; ``settings()`` reports it. False where glibc is absent."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        ok = bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        ok = False
    if ok:
        _STEADY_MALLOC["mmap_threshold"] = mmap_threshold
    return ok


def settings() -> dict:
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "(unset)"), "torch": torch.__version__,
            "cpus": os.cpu_count(), "usable_cpus": usable, "cuda": torch.cuda.is_available(),
            "steady_malloc": bool(_STEADY_MALLOC)}


def header(info: dict | None = None) -> str:
    s = info or settings()
    usable = s.get("usable_cpus", s["cpus"])
    pinned = f" (pinned to {usable})" if usable != s["cpus"] else ""
    return (f"protocol: interleaved rounds, rotating order, warm-ups discarded, median [min-max]; "
            f"threads {s['threads']}, OMP_WAIT_POLICY {s['omp_wait_policy']}, OMP_NUM_THREADS {s['omp_num_threads']}, "
            f"torch {s['torch']}, {s['cpus']} CPUs{pinned}{', CUDA' if s['cuda'] else ''}"
            f"{', steady malloc (freed memory kept)' if s.get('steady_malloc') else ''}")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ci95(xs: list[float]) -> tuple[float, float]:
    """A distribution-free 95 % confidence interval of the median of ``xs``: the order statistics of ranks
    n/2 -+ 0.98 sqrt(n) (the binomial's normal approximation); [min, max] for fewer than 6 values."""
    xs = sorted(xs)
    n = len(xs)
    if n < 6:
        return xs[0], xs[-1]
    half = 0.98 * math.sqrt(n)
    lo, hi = max(1, math.floor(n / 2 - half)), min(n, math.ceil(n / 2 + 1 + half))  # 1-based ranks
    return xs[lo - 1], xs[hi - 1]


def summarize(xs: list[float]) -> dict:
    """Median, min, max, IQR, n and the median's 95 % CI (``ci95``, ``ci_half``) of ``xs``."""
    xs = sorted(xs)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    lo, hi = median_ci95(xs)
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "iqr": q3 - q1, "n": len(xs),
            "ci95": [lo, hi], "ci_half": (hi - lo) / 2}


def order(names: list[str], round_index: int) -> list[str]:
    """The order of the sides in one round: rotated by one each round."""
    k = round_index % len(names)
    return names[k:] + names[:k]


def _ratios(names: list[str], times: dict[str, list[float]]) -> dict[str, list[float]]:
    first = names[0]
    return {f"{first}/{other}": [a / b for a, b in zip(times[first], times[other], strict=True)] for other in names[1:]}


def compare(sides: dict[str, Callable[[], object]], *, warmup: int = WARMUP, repeats: int = REPEATS,
            clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = _sync,
            until_ci: float | None = None, max_repeats: int | None = None, max_seconds: float | None = None) -> dict:
    """Time ``sides`` interleaved; the first side is the numerator of every ratio.

    ``until_ci`` (the stopping rule for a ratio that must repeat): after the ``repeats`` rounds, go on
    round by round until every ratio's median has a 95 % confidence interval (``median_ci95``) of
    half-width <= ``until_ci``, or ``max_repeats`` rounds were kept, or ``max_seconds`` have passed
    (by ``clock``) since the first kept round; ``ci_reached`` says which. Two runs whose half-widths are
    both <= 0.015 agree to about +-0.03. Returns ``{"sides": {name: stats}, "ratios": {"a/b": stats},
    "times": {name: [kept seconds]}, "order": [names in call order, warm-ups included], "warmup",
    "repeats" (kept rounds), "until_ci", "ci_reached"}``; stats carry median, min, max, IQR, n, ``ci95``
    [low, high] and ``ci_half``.
    """
    names = list(sides)
    if not names or repeats < 1 or warmup < 0:
        raise ValueError("compare needs at least one side, repeats >= 1, warmup >= 0")
    if until_ci is not None and (until_ci <= 0 or len(names) < 2):
        raise ValueError("until_ci needs a positive half-width and at least two sides (a ratio)")
    times: dict[str, list[float]] = {n: [] for n in names}
    called: list[str] = []
    started: float | None = None
    ci_reached: bool | None = None
    r = 0
    while True:
        if r == warmup:
            started = clock()
        for name in order(names, r):
            if sync:
                sync()
            t0 = clock()
            sides[name]()
            if sync:
                sync()
            dt = clock() - t0
            called.append(name)
            if r >= warmup:
                times[name].append(dt)
        r += 1
        kept = r - warmup
        if kept < repeats:
            continue
        if until_ci is None:
            break
        ci_reached = all((hi - lo) / 2 <= until_ci for lo, hi in map(median_ci95, _ratios(names, times).values()))
        out_of_rounds = max_repeats is not None and kept >= max_repeats
        out_of_time = max_seconds is not None and started is not None and clock() - started >= max_seconds
        if ci_reached or out_of_rounds or out_of_time:
            break
    ratios = {k: summarize(v) for k, v in _ratios(names, times).items()}
    return {"sides": {n: summarize(times[n]) for n in names}, "ratios": ratios, "times": times,
            "order": called, "warmup": warmup, "repeats": r - warmup, "until_ci": until_ci, "ci_reached": ci_reached}


def add_stopping_arguments(parser, default_ci: float | None = None) -> None:  # noqa: ANN001 - an argparse parser
    """``--until-ci H`` and ``--max-minutes M``: compare's stopping rule, for a script's ratios."""
    parser.add_argument("--until-ci", type=float, default=default_ci, metavar="H",
                        help="after the rounds asked for, go on until each ratio's median has a 95%% CI of half-width "
                             "<= H (0.015: two runs agree to about +-0.03); default: off")  # fmt: skip
    parser.add_argument("--max-minutes", type=float, default=10.0,
                        help="--until-ci: stop after this many minutes per comparison even if the CI is wider (default 10)")


def stopping(args) -> dict:  # noqa: ANN001 - the namespace of a parser given add_stopping_arguments
    """compare's keyword arguments for the stopping rule the command line asked for."""
    if not getattr(args, "until_ci", None):
        return {}
    return {"until_ci": args.until_ci, "max_seconds": 60.0 * args.max_minutes}


def rounded(stats: dict, digits: int = 4) -> dict:
    """A stats dict (``compare``'s) with its numbers rounded, the CI's bounds included (for JSON reports)."""
    return {k: [round(x, digits) for x in v] if isinstance(v, list) else round(v, digits) if isinstance(v, float) else v
            for k, v in stats.items()}  # fmt: skip


def time_one(fn: Callable[[], object], *, warmup: int = WARMUP, repeats: int = REPEATS, **kw) -> dict:
    """One side alone (an absolute time, no ratio): the same protocol's stats."""
    return compare({"x": fn}, warmup=warmup, repeats=repeats, **kw)["sides"]["x"]


def format_result(result: dict, unit: float = 1e3, suffix: str = "ms") -> str:
    parts = [f"{n} {s['median'] * unit:.1f} {suffix} [{s['min'] * unit:.1f}-{s['max'] * unit:.1f}]"
             for n, s in result["sides"].items()]
    parts += [f"ratio {k} {s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}, IQR {s['iqr']:.3f}, 95% CI +-{s['ci_half']:.3f}]"
              for k, s in result["ratios"].items()]
    return "  ".join(parts) + f"  ({result['repeats']} rounds, {result['warmup']} warm-up{ci_note(result.get('ci_reached'))})"


def ci_note(ci_reached: bool | None) -> str:
    """What the stopping rule came to, for a result line: nothing without a CI target."""
    if ci_reached is None:
        return ""
    return ", CI target reached" if ci_reached else ", CI target NOT reached (time or round cap)"


class StageTimer:
    """Exclusive wall time per stage of wrapped functions (a stage's time excludes the stages it calls)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list] = []

    def wrap(self, stage: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            frame = [stage, self.clock(), 0.0]  # stage, start, time spent in nested stages
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                spent = self.clock() - frame[1]
                self.totals[stage] = self.totals.get(stage, 0.0) + spent - frame[2]
                self.calls[stage] = self.calls.get(stage, 0) + 1
                if self._stack:
                    self._stack[-1][2] += spent

        return timed

    @contextlib.contextmanager
    def patched(self, targets: list[tuple[object, str, str]]) -> Iterator[StageTimer]:
        """Wrap ``getattr(module, name)`` as ``stage`` for each (module, name, stage) inside the block.

        Patch the name where the caller looks it up (``from x import f`` binds its own copy)."""
        saved = [(mod, name, getattr(mod, name)) for mod, name, _ in targets]
        try:
            for mod, name, stage in targets:
                setattr(mod, name, self.wrap(stage, getattr(mod, name)))
            yield self
        finally:
            for mod, name, fn in reversed(saved):
                setattr(mod, name, fn)
