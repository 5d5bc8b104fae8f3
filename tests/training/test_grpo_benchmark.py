"""benchmarks/grpo_vs_sft.py runs end to end on a small task and reports every figure (none is asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grpo_vs_sft.py"


def test_grpo_vs_sft_reports_uars_rewards_and_the_png(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("_bench_grpo_vs_sft", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    argv = ["--clips", "32", "--test", "8", "--sft-steps", "6", "--steps", "2", "--batch-size", "4",
            "--generations", "2", "--eval-every", "1", "--seeds", "0,1", "--out", str(tmp_path / "work")]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("protocol:")
    lines = [json.loads(x) for x in printed.strip().splitlines() if x.startswith("{")]
    per_seed, overall = lines[:-1], lines[-1]
    assert [s["seed"] for s in per_seed] == [0, 1]
    for summary in per_seed:
        for key in ("uar_sft_start", "uar_grpo", "uar_sft_more", "reward_first", "reward_last", "chance"):
            assert 0 <= summary[key] <= 2, key
        assert summary["steps"] == 2
        # the held-out UAR during each continuation: the SFT start, then the loop's evaluation at steps 1 and 2
        assert [step for step, _ in summary["uar_curve_grpo"]] == [0, 1, 2] == [s for s, _ in summary["uar_curve_sft_more"]]
        assert summary["uar_curve_grpo"][0][1] == summary["uar_sft_start"]
        assert (tmp_path / "work" / f"seed{summary['seed']}" / "grpo_reward.png").stat().st_size > 1000
    assert overall["of"] == 2 and 0 <= overall["grpo_uar_rose"] <= 2
