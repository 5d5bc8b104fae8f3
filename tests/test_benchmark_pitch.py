"""benchmarks/pitch.py scores a tracker against the F0 it synthesised (the figures in benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "pitch.py"


def _load():
    spec = importlib.util.spec_from_file_location("_bench_pitch", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_builders_yin_scores_on_known_f0_and_a_wrong_tracker_does_not() -> None:
    bench = _load()
    x, f0 = bench.synthetic(20.0)
    t_f0, t_voiced, scored = bench.frame_truth(f0)
    assert t_voiced.sum() > 400 and (~t_voiced & scored).sum() > 100 and (~scored).sum() > 0  # edges not scored
    acc = bench.accuracy(*bench.ours(x), t_f0, t_voiced, scored)
    assert acc["gpe_pct"] < 1 and acc["fpe_cents"] < 10 and acc["vde_pct"] < 2 and acc["false_voiced_pct"] == 0
    f, v = bench.ours(x)
    octave = bench.accuracy(f / 2, v, t_f0, t_voiced, scored)  # a tracker an octave low is all gross errors
    assert octave["gpe_pct"] == 100
    always = bench.accuracy(f, np.ones_like(v), t_f0, t_voiced, scored)
    assert always["false_voiced_pct"] == 100 and always["vde_pct"] > 10
