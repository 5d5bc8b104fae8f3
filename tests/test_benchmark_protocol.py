"""benchmarks/protocol.py: the shared timing protocol, checked with a fake clock (no real timing)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "protocol.py"


@pytest.fixture(scope="module")
def protocol():
    spec = importlib.util.spec_from_file_location("_bench_protocol", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class FakeClock:
    """Each side's call advances the clock by the next duration scripted for that side."""

    def __init__(self, durations: dict[str, list[float]]):
        self.now = 0.0
        self.durations = {k: list(v) for k, v in durations.items()}
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def side(self, name: str):
        def run():
            self.calls.append(name)
            self.now += self.durations[name].pop(0)
        return run


def _run(protocol, durations, **kw):
    clock = FakeClock(durations)
    res = protocol.compare({n: clock.side(n) for n in durations}, clock=clock, sync=None, **kw)
    return res, clock


def test_sides_are_interleaved_in_a_rotating_order(protocol):
    res, clock = _run(protocol, {"a": [1.0] * 5, "b": [1.0] * 5}, warmup=1, repeats=4)
    assert clock.calls == res["order"] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    res, clock = _run(protocol, {"a": [1.0] * 3, "b": [1.0] * 3, "c": [1.0] * 3}, warmup=0, repeats=3)
    assert clock.calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert set(res["ratios"]) == {"a/b", "a/c"}


def test_warmups_are_discarded(protocol):
    # the two warm-up rounds are slow (first call, allocation): none of them may reach the stats
    res, _ = _run(protocol, {"a": [50.0, 40.0, 2.0, 2.0, 2.0], "b": [30.0, 20.0, 1.0, 1.0, 1.0]}, warmup=2, repeats=3)
    assert res["times"] == {"a": [2.0, 2.0, 2.0], "b": [1.0, 1.0, 1.0]}
    assert res["sides"]["a"] == {"median": 2.0, "min": 2.0, "max": 2.0, "iqr": 0.0, "n": 3, "ci95": [2.0, 2.0],
                                 "ci_half": 0.0}
    assert res["ratios"]["a/b"]["median"] == 2.0


def test_ratio_is_per_round_then_median(protocol):
    # the machine drifts (both sides slow down together): per-round ratios stay 1.5, the pooled medians would not
    a = [3.0, 6.0, 9.0, 12.0, 300.0]
    b = [2.0, 4.0, 6.0, 8.0, 2.0]  # last round: a one-sided burst on a
    res, _ = _run(protocol, {"a": a, "b": b}, warmup=0, repeats=5)
    r = res["ratios"]["a/b"]
    assert r["median"] == pytest.approx(1.5)
    assert r["min"] == pytest.approx(1.5) and r["max"] == pytest.approx(150.0)
    assert r["n"] == 5 and r["iqr"] == pytest.approx(0.0)


def test_one_sided_burst_barely_moves_the_median_ratio(protocol):
    base_a, base_b = [1.10, 1.12, 1.09, 1.11, 1.10, 1.11, 1.10], [1.0] * 7
    calm, _ = _run(protocol, {"a": base_a, "b": base_b}, warmup=0, repeats=7)
    burst_a = list(base_a)
    burst_a[3] *= 1.5  # another job took the cores for one call of one side
    noisy, _ = _run(protocol, {"a": burst_a, "b": base_b}, warmup=0, repeats=7)
    assert abs(noisy["ratios"]["a/b"]["median"] - calm["ratios"]["a/b"]["median"]) <= 0.01
    assert noisy["ratios"]["a/b"]["max"] == pytest.approx(1.665)


def test_single_side_and_bad_arguments(protocol):
    clock = FakeClock({"x": [1.0, 0.5, 0.5, 0.7]})
    st = protocol.time_one(clock.side("x"), warmup=1, repeats=3, clock=clock, sync=None)
    assert st["median"] == pytest.approx(0.5) and st["max"] == pytest.approx(0.7)
    with pytest.raises(ValueError):
        protocol.compare({}, repeats=3)
    with pytest.raises(ValueError):
        protocol.compare({"x": lambda: None}, repeats=0)


def test_setup_threads_fixes_and_reports_the_settings(protocol, monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    try:
        info = protocol.setup_threads(1)
        assert info["threads"] == 1 == torch.get_num_threads()
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_NUM_THREADS"] == "1"
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        assert protocol.setup_threads(1)["omp_wait_policy"] == "ACTIVE"  # an explicit choice is kept
        line = protocol.header(info)
        for piece in ("threads 1", "OMP_WAIT_POLICY PASSIVE", f"torch {torch.__version__}", f"{os.cpu_count()} CPUs"):
            assert piece in line
    finally:
        torch.set_num_threads(before)


def test_format_result_prints_median_and_spread(protocol):
    res, _ = _run(protocol, {"emollm": [0.011, 0.012, 0.013], "bare": [0.010] * 3}, warmup=0, repeats=3)
    text = protocol.format_result(res)
    assert "emollm 12.0 ms [11.0-13.0]" in text and "bare 10.0 ms [10.0-10.0]" in text
    assert "ratio emollm/bare 1.200 [1.100-1.300" in text and "3 rounds, 0 warm-up" in text


def test_stage_timer_counts_nested_stages_once_and_restores_patches(protocol):
    """A stage's time excludes the stages it calls, and the patched names come back afterwards."""
    import types

    now = [0.0]

    def tick(dt):
        now[0] += dt

    mod = types.SimpleNamespace()
    mod.inner = lambda: tick(2.0)

    def outer():
        tick(1.0)
        mod.inner()
        tick(0.5)

    mod.outer = outer
    original = (mod.outer, mod.inner)
    timer = protocol.StageTimer(clock=lambda: now[0])
    with timer.patched([(mod, "outer", "analyse"), (mod, "inner", "decode")]):
        mod.outer()
        mod.inner()
    assert timer.totals == {"analyse": 1.5, "decode": 4.0}
    assert timer.calls == {"analyse": 1, "decode": 2}
    assert (mod.outer, mod.inner) == original


def test_setup_threads_caps_the_native_pools_already_loaded(protocol, monkeypatch):
    """numpy's BLAS pool is sized at import, before OMP_NUM_THREADS is set: the protocol caps it in place."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy  # noqa: F401 - loads OpenBLAS with its own pool
    import torch

    before = torch.get_num_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    try:
        protocol.setup_threads(1)
        pools = threadpoolctl.threadpool_info()
        assert pools and all(p["num_threads"] == 1 for p in pools)
    finally:
        while protocol._POOL_LIMITS:
            protocol._POOL_LIMITS.pop().restore_original_limits()
        torch.set_num_threads(before)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)")
def test_pinned_cpus_runs_the_block_on_n_cpus_and_gives_them_back(protocol):
    before = os.sched_getaffinity(0)
    with protocol.pinned_cpus(1) as pinned:
        assert os.sched_getaffinity(0) == pinned and len(pinned) == 1 and pinned <= before
        assert protocol.settings()["usable_cpus"] == 1
        if len(before) > 1:
            assert "(pinned to 1)" in protocol.header()
    assert os.sched_getaffinity(0) == before
    with pytest.raises(RuntimeError), protocol.pinned_cpus(1):  # restored on an error too
        raise RuntimeError("boom")
    assert os.sched_getaffinity(0) == before
    with pytest.raises(ValueError, match="cannot pin"), protocol.pinned_cpus(len(before) + 1):
        pass
    with protocol.pinned_cpus(None) as pinned:
        assert pinned is None and os.sched_getaffinity(0) == before


def test_median_ci95_is_the_order_statistics_around_the_median(protocol):
    xs = list(range(1, 101))  # n=100: ranks 50 -+ 9.8 -> 40 and 61
    assert protocol.median_ci95(xs) == (40, 61)
    assert protocol.median_ci95([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few: the whole range
    wide = protocol.median_ci95([1.0 + 0.1 * (i % 7) for i in range(20)])
    narrow = protocol.median_ci95([1.0 + 0.1 * (i % 7) for i in range(400)])
    assert wide[0] <= narrow[0] <= 1.3 <= narrow[1] <= wide[1]  # more rounds, a narrower interval


def test_until_ci_adds_rounds_until_the_ratio_is_that_precise(protocol):
    # per-round ratios alternate 1.0 / 1.2: the median's interval shrinks only as rounds add up;
    # the sides never settle, so only a cap can stop a target tighter than the spread
    noisy = {"a": [1.0, 1.2] * 200, "b": [1.0] * 400}
    res, _ = _run(protocol, noisy, warmup=0, repeats=5, until_ci=0.15, max_repeats=200)
    assert res["ci_reached"] is True and res["ratios"]["a/b"]["ci_half"] <= 0.15 and res["repeats"] >= 5
    quiet = {"a": [2.0] * 400, "b": [1.0] * 400}  # no spread: the first check stops it
    res, _ = _run(protocol, quiet, warmup=1, repeats=7, until_ci=0.015)
    assert res["ci_reached"] is True and res["repeats"] == 7
    res, _ = _run(protocol, noisy, warmup=0, repeats=5, until_ci=0.001, max_repeats=30)
    assert res["ci_reached"] is False and res["repeats"] == 30  # the round cap, said so
    assert "NOT reached" in protocol.format_result(res)
    res, clock = _run(protocol, noisy, warmup=0, repeats=5, until_ci=0.001, max_seconds=20.0)
    assert res["ci_reached"] is False and 20.0 <= clock.now < 23.0  # the time cap (rounds take 2.0-2.2 s)
    res, _ = _run(protocol, noisy, warmup=0, repeats=5)
    assert res["repeats"] == 5 and res["ci_reached"] is None  # no target: exactly the rounds asked
    with pytest.raises(ValueError, match="until_ci"):
        _run(protocol, {"a": [1.0] * 9}, repeats=3, until_ci=0.01)  # one side: no ratio to make precise


_FAULTS = """
import resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import protocol
steady = sys.argv[2] == "steady"
if steady:
    assert protocol.steady_malloc() is True
assert protocol.settings()["steady_malloc"] is steady and ("steady malloc" in protocol.header()) is steady
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [np.ones(8 << 20, dtype=np.uint8) for _ in range(8)]  # 64 MB, touched: page faults where new
    del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print([faults() for _ in range(4)][-1])  # the last of 4 calls: the heap has grown by then
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_steady_malloc_serves_a_repeated_allocation_from_pages_already_touched():
    """In a child process (it changes the allocator for good): a freed 64 MB of 8 MB blocks, allocated again,
    page-faults thousands of times under glibc's default and (almost) never after ``steady_malloc``."""
    import subprocess

    def last_call_faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _FAULTS, str(PATH.parent), mode], capture_output=True, text=True,
                             check=True)
        return int(out.stdout.strip())

    assert last_call_faults("steady") < 500 < 2000 < last_call_faults("default")
