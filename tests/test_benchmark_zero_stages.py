"""benchmarks/zero_stages.py runs both ZeRO stages end to end on CPU (tiny backbone, 2 gloo processes each) and
reports every figure; no timing is asserted (the CPU run checks the code path the GPU run takes)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "zero_stages.py"


def _load():
    spec = importlib.util.spec_from_file_location("_bench_zero_stages", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_zero2_and_zero3_report_step_time_tokens_and_memory_on_two_cpu_processes(sample_dir, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU path (gloo), also on a GPU machine
    bench = _load()
    out = tmp_path / "zero.json"
    argv = ["--stages", "zero2,zero3", "--nproc", "2", "--backbone", "tiny", "--batch", "1", "--seq", "128",
            "--steps", "2", "--warmup", "1", "--work", str(tmp_path / "work"), "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("protocol:")
    assert "ratio zero3/zero2 step time" in printed

    report = json.loads(out.read_text())
    stages = report["stages"]
    assert list(stages) == ["zero2", "zero3"]
    for name, r in stages.items():
        assert r["zero_stage"] == int(name[-1]) and r["world_size"] == 2 and r["world_sizes"] == [2, 2], name
        assert r["step_s"]["n"] == 2
        for key in ("median", "min", "max"):
            assert math.isfinite(r["step_s"][key]) and r["step_s"][key] > 0, (name, key)
        assert r["tokens_per_step"] == 1 * 128 * 2
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_s"]["median"], rel=1e-3)
        assert r["target_tokens_per_rank"] > 0 and all(map(math.isfinite, r["loss_first_last"]))
        assert len(r["peak_mem_bytes_per_rank"]) == 2 and min(r["peak_mem_bytes_per_rank"]) > 0
        assert r["mfu"] is None and "CPU" in r["mfu_reason"]
    # the same batch, seed and model: both stages compute the same first loss
    assert stages["zero2"]["loss_first_last"][0] == pytest.approx(stages["zero3"]["loss_first_last"][0], rel=1e-4)
    # LoRA under ZeRO-3 checkpoints reentrantly (build_model's choice), ZeRO-2 does not
    assert stages["zero3"]["checkpointing_use_reentrant"] == ["True"]
    assert stages["zero2"]["checkpointing_use_reentrant"] == ["False"]
    expected = stages["zero3"]["step_s"]["median"] / stages["zero2"]["step_s"]["median"]
    assert report["ratio_zero3_over_zero2"] == pytest.approx(expected)
