"""benchmarks/vs_trl.py: both trainers see the same token sequences, in the same batches, with the same LoRA.

Both sides run in this process on the tiny local LLaMA for 2 steps (the benchmark runs them as child
processes; the code each side runs is the same). The lockstep that interleaves the two children step by
step is tested on stand-in children. No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load():
    spec = importlib.util.spec_from_file_location("_bench_vs_trl", BENCHMARKS / "vs_trl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_both_trainers_see_the_same_sequences_and_lora(tmp_path, monkeypatch):
    bench = _load()
    spec = bench.prepare(tmp_path, backbone="tiny", steps=2, batch_size=2)
    exported = [json.loads(line) for line in Path(spec["sequences"]).read_text().splitlines()]
    assert spec["media_tokens_per_sample"] > 0  # emollm's prompts carry media tokens

    # emollm: train.py in this process, its collator's batches recorded
    from emollm.training import data as training_data

    emollm_seen = []
    collate = training_data.EmotionCollator.__call__

    def recording(self, items):
        batch = collate(self, items)
        if self.padding_side == "right":
            emollm_seen.append(bench.unpadded(batch))
        return batch

    monkeypatch.setattr(training_data.EmotionCollator, "__call__", recording)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    assert bench.child_emollm(spec, tmp_path / "run_emollm", tmp_path / "emollm.json") == 0
    emollm_report = json.loads((tmp_path / "emollm.json").read_text())
    emollm_run = bench.read_emollm_run(tmp_path / "run_emollm", spec, emollm_report)
    monkeypatch.undo()
    from emollm.training import loop

    assert loop._log_window.__name__ == "_log_window"  # the step clock put the loop back

    assert bench.child_trl(spec, tmp_path / "run_trl", tmp_path / "trl.json", record=True) == 0
    trl_run = json.loads((tmp_path / "trl.json").read_text())

    # the same samples, step by step: TRL's are emollm's with each media token as the filler token
    media = {t for r in exported for t, u in zip(r["emollm_ids"], r["input_ids"], strict=True) if t != u}
    assert media and spec["filler_token"] not in media
    as_trl = [[{"input_ids": [spec["filler_token"] if t in media else t for t in row["input_ids"]],
                "labels": row["labels"]} for row in batch] for batch in emollm_seen]
    assert len(as_trl) == spec["steps"] and all(len(b) == spec["batch_size"] for b in as_trl)
    assert trl_run["seen"] == as_trl
    assert [[r["emollm_ids"] for r in exported if r["step"] == s] for s in (1, 2)] == \
        [[row["input_ids"] for row in batch] for batch in emollm_seen]
    # a loss on the answer only, the same target tokens both sides
    assert all(any(lab != -100 for lab in row["labels"]) and row["labels"][0] == -100 for b in as_trl for row in b)
    assert emollm_run["step_tokens"] == spec["step_tokens"]  # what emollm's log counts, step by step

    # the same LoRA, as each side saved / built it
    assert emollm_run["lora"] == trl_run["lora"]
    assert trl_run["lora"]["r"] == spec["lora"]["r"] and trl_run["lora"]["target_modules"] == sorted(bench.TARGETS)
    assert len(emollm_run["losses"]) == len(trl_run["losses"]) == len(trl_run["step_s"]) == spec["steps"]
    for run in (emollm_run, trl_run):  # each side's own step clock, on both clocks
        assert len(run["step_cpu_s"]) == spec["steps"] and all(t > 0 for t in run["step_s"] + run["step_cpu_s"])


def test_time_to_common_loss_is_the_first_step_at_the_higher_final_level():
    bench = _load()
    spec = {"step_samples": [2] * 4, "step_tokens": [10] * 4}
    fast = {"losses": [4.0, 3.0, 2.0, 1.0], "step_s": [1.0] * 4, "wall_s": 5.0, "max_rss_bytes": 2**20}
    slow = {"losses": [4.0, 3.5, 3.0, 2.5], "step_s": [2.0] * 4, "wall_s": 9.0, "max_rss_bytes": 2**21}
    result = bench.compare_round(fast, slow, spec, warmup=1, smooth=2)
    assert result["target_loss"] == pytest.approx(2.75)  # slow's final 2-step mean
    assert result["emollm"]["time_to_loss_s"] == pytest.approx(3.0)  # fast: (3 + 2) / 2 <= 2.75 at step 3
    assert result["trl"]["time_to_loss_s"] == pytest.approx(8.0)  # slow: at its last step
    assert result["ratios"]["time_to_loss"] == pytest.approx(3.0 / 8.0)
    assert (result["emollm"]["steps_to_loss"], result["trl"]["steps_to_loss"]) == (3, 4)
    assert result["ratios"]["samples_per_s"] == pytest.approx(2.0)  # steady state: steps 2-4
    assert result["step_ratios"]["wall"] == pytest.approx([2.0, 2.0, 2.0])  # per step: slow's time / fast's
    fast["step_cpu_s"], slow["step_cpu_s"] = [2.0] * 4, [3.0] * 4  # the CPU clock, when both sides have it
    assert bench.compare_round(fast, slow, spec, warmup=1, smooth=2)["step_ratios"]["cpu"] == pytest.approx([1.5] * 3)


FAKE_CHILD = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("vs_trl", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
name, turns, journal, die_at = sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
open(journal + "." + name + ".pid", "w").write(str(os.getpid()))
baton = bench.Baton()

def note(what):
    with open(journal, "a") as fh:
        fh.write(what + "\\n")

baton.await_turn()
for k in range(turns + 1):
    if k == die_at:
        sys.exit(3)
    note(f"{name} {k} begin")
    time.sleep(0.02)  # a turn's work: another child working now would show between begin and end
    note(f"{name} {k} end")
    if k < turns:
        baton.handoff()
"""


def _fake_children(tmp_path, die_at=None):
    bench = _load()
    script = tmp_path / "child.py"
    script.write_text(FAKE_CHILD)
    journal = tmp_path / "journal.txt"
    commands = {side: [sys.executable, str(script), str(BENCHMARKS / "vs_trl.py"), side, "3", str(journal),
                       str(die_at if side == "b" and die_at is not None else -1)] for side in ("a", "b")}
    logs = {side: tmp_path / f"{side}.log" for side in commands}
    return bench, bench.Conductor(commands, logs), journal


def test_lockstep_gives_one_child_a_turn_at_a_time_in_rotating_order(tmp_path):
    bench, conductor, journal = _fake_children(tmp_path)
    ended = conductor.run(3, offset=1)
    assert {side: e["returncode"] for side, e in ended.items()} == {"a": 0, "b": 0}
    lines = journal.read_text().splitlines()
    # every turn is begin, end of one child, never interleaved with the other's
    assert all(b.endswith("begin") and e.endswith("end") and b.split()[:2] == e.split()[:2]
               for b, e in zip(lines[::2], lines[1::2], strict=True))
    order = [line.split()[0] for line in lines[::2]]
    assert order == ["b", "a", "a", "b", "b", "a", "a", "b"]  # turns 0-3, offset 1: B A, A B, B A, A B
    assert conductor.turns_taken == order
    assert [int(line.split()[1]) for line in lines[::2]] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_lockstep_stops_with_the_failed_childs_log_and_leaves_no_child_behind(tmp_path):
    import os

    bench, conductor, journal = _fake_children(tmp_path, die_at=2)
    with pytest.raises(RuntimeError, match=r"the b run failed: it exited mid-run \(exit 3\)"):
        conductor.run(3)
    for side in ("a", "b"):
        pid = int((tmp_path / f"journal.txt.{side}.pid").read_text())
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(pid, 0)
