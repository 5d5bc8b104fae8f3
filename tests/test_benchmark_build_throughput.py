"""benchmarks/build_throughput.py's stage split times the functions a build really calls (the old --full
split wrapped entry points the clip analysis had stopped calling, and read 0 s for faces / AUs)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "build_throughput.py"

pytest.importorskip("dlib", reason="the build's face stages need the 'faces' extra (dlib-bin)")


def _load():
    spec = importlib.util.spec_from_file_location("_bench_build_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_stage_of_a_build_is_timed_and_the_split_sums_to_the_wall(sample_dir, tmp_path) -> None:
    bench = _load()
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "single_face.mp4", clips / "a.mp4")
    cfg = bench.config(None)
    timer = bench.StageTimer()  # protocol's, as the script imported it
    run = bench.one_build(cfg, clips, 1, timer)
    assert run["clips"] == 1 and run["clip_seconds"] > 2
    for stage in ("probe", "decode video", "decode audio", "faces", "landmarks", "AUs", "expression", "tone",
                  "peak/rules/writer", "part files/merge"):  # fmt: skip
        assert timer.calls.get(stage, 0) > 0 and timer.totals[stage] > 0, stage
    assert "ASR" not in timer.calls  # build.asr=none
    assert sum(timer.totals.values()) <= run["wall_s"]  # exclusive times: "other" is what is left
