"""Every benchmark script times through the one shared protocol (benchmarks/protocol.py): read, not run.

A script must import the protocol and print its header (threads, OMP_WAIT_POLICY, ... above its figures),
and must not keep its own repeat-timing loop (a clock read inside a loop, or a clock-reading helper called
from one: the old ``for _ in range(repeats): t0 = perf_counter() ...; median(times)`` that made ratios of
sides timed in separate blocks). A whole run timed once (t0 ... one build ... t1) is allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "protocol.py")
CLOCKS = {"perf_counter", "perf_counter_ns", "process_time", "process_time_ns", "monotonic", "monotonic_ns",
          "timeit", "default_timer"}  # fmt: skip  (time.time is left out: the fault cases poll timeouts with it)
LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
# Clock-reading helpers that are called in a loop but time one whole thing each, never a rate or a ratio.
EXEMPT = {
    "faults.py": {"cli": "one CLI command's duration, shown in its case's detail",
                  "python": "one child process's duration, as cli",
                  "run_case": "one fault case's duration, printed beside its verdict (stderr)"},
    "vs_trl.py": {"_start": "a child process's whole life (start-up to exit), for its process wall time; its steps "
                           "are interleaved with the other side's by the lockstep and timed inside the child",
                  "_finish": "as _start: the end of that child's life",
                  "_past": "the --max-minutes cap on adding lockstep pairs, not a measurement"},
}  # fmt: skip


def _name(func: ast.expr) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _is_clock(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _name(node.func) in CLOCKS


def _protocol_names(tree: ast.Module) -> set[str]:
    """How the script refers to protocol.header: ``protocol.header`` or a name imported from protocol."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "protocol" for a in node.names):
            names.add("protocol")
        elif isinstance(node, ast.ImportFrom) and node.module == "protocol":
            names |= {f"from:{a.asname or a.name}" for a in node.names}
    return names


def _prints_header(tree: ast.Module, names: set[str]) -> bool:
    def is_header(call: ast.AST) -> bool:
        if not isinstance(call, ast.Call):
            return False
        f = call.func
        if isinstance(f, ast.Attribute) and f.attr == "header" and isinstance(f.value, ast.Name):
            return f.value.id == "protocol" and "protocol" in names
        return isinstance(f, ast.Name) and f"from:{f.id}" in names and f.id == "header"

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node.func) == "print":
            if any(is_header(sub) for arg in node.args for sub in ast.walk(arg)):
                return True
    return False


def own_timing_loops(source: str, exempt: dict[str, str] | None = None) -> list[str]:
    """Where ``source`` repeats a timing itself: ``line N: why`` for each place (empty: none)."""
    tree = ast.parse(source)
    found = []
    clocked = {}  # function name -> first line of a clock read in it
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            reads = [n.lineno for n in ast.walk(node) if _is_clock(n)]
            if reads:
                clocked.setdefault(node.name, reads[0])
    for loop in (n for n in ast.walk(tree) if isinstance(n, LOOPS)):
        for sub in ast.walk(loop):
            if _is_clock(sub):
                found.append(f"line {sub.lineno}: a clock read inside a loop")
            elif isinstance(sub, ast.Call) and _name(sub.func) in clocked and _name(sub.func) not in (exempt or {}):
                found.append(f"line {sub.lineno}: {_name(sub.func)}() (reads a clock, line "
                             f"{clocked[_name(sub.func)]}) called inside a loop")  # fmt: skip
    return sorted(set(found), key=lambda s: int(s.split()[1].rstrip(":")))


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_imports_the_protocol_and_prints_its_header(script):
    tree = ast.parse((BENCHMARKS / script).read_text(encoding="utf-8"))
    names = _protocol_names(tree)
    assert names, f"benchmarks/{script} does not import the shared protocol (import protocol)"
    assert _prints_header(tree, names), f"benchmarks/{script} does not print protocol.header() above its results"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_has_no_timing_loop_of_its_own(script):
    found = own_timing_loops((BENCHMARKS / script).read_text(encoding="utf-8"), EXEMPT.get(script))
    assert not found, f"benchmarks/{script} times in its own loop (use protocol.compare / time_one): " + "; ".join(found)


def test_the_checks_catch_a_hand_rolled_ratio_and_pass_the_protocol_way():
    # the old benchmarks' pattern: each side timed in its own block, medians divided
    old = '''
import statistics, time
def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
def one(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
def main():
    print(timed(a, 3) / timed(b, 3), [one(a) for _ in range(3)])
'''
    found = own_timing_loops(old)
    assert [f.split(":")[0] for f in found] == ["line 6", "line 8", "line 15"]
    assert "one() (reads a clock, line 11) called inside a loop" in found[-1]
    assert own_timing_loops(old, {"one": "why"})[-1].startswith("line 8")

    new = '''
import sys, time
import protocol
def main():
    print(protocol.header())
    res = protocol.compare({"a": a, "b": b})
    t0 = time.perf_counter()
    build()
    wall = time.perf_counter() - t0
'''
    tree = ast.parse(new)
    assert own_timing_loops(new) == [] and _prints_header(tree, _protocol_names(tree))
    no_print = ast.parse("import protocol\nh = protocol.header()\n")
    assert not _prints_header(no_print, _protocol_names(no_print))
    from_import = ast.parse("from protocol import header\nprint(header(info))\n")
    assert _prints_header(from_import, _protocol_names(from_import))


def test_every_exemption_still_names_a_clock_reading_helper_called_in_a_loop():
    # a stale entry (helper renamed, or no longer timing) must not linger as a blanket pass
    for script, names in EXEMPT.items():
        flagged = " ".join(own_timing_loops((BENCHMARKS / script).read_text(encoding="utf-8")))
        for name in names:
            assert f" {name}() " in flagged, f"EXEMPT[{script!r}][{name!r}] no longer matches anything"
