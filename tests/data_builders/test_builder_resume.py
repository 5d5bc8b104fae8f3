"""kill -9 in the middle of `emollm build`, then the same command: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from data_builders.runner import PARTS_DIR, build
from emollm import config as cfglib
from emollm.dataset.record import read_annotations

ARGS = ["build.au_fps=10"]


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_loses_and_duplicates_nothing(sample_dir, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    ids = {f"clip_{i:02d}" for i in range(10)}
    for cid in ids:
        shutil.copy(sample_dir / "single_face.mp4", clips / f"{cid}.mp4")
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "emollm.cli.main", "--quiet", "build", str(clips), "--out", str(out), *ARGS]
    env = {**os.environ, "EMOLLM_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = out / PARTS_DIR
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("*.json"))) >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the build finished before it could be killed: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("*.json")))
    assert 3 <= done_before < 10 and not (out / "annotations.jsonl").exists()

    summary = build(cfglib.load(None, ARGS), clips, out)
    assert summary.reused == done_before and summary.computed == 10 - done_before and summary.failed == 0
    records = read_annotations(out / "annotations.jsonl")
    assert sorted(r["id"] for r in records) == sorted(ids)  # each id exactly once
    assert len(list(parts.glob("*.json"))) == 10 and all((out / r["aus_file"]).is_file() for r in records)


def test_shard_argument_and_accelerate_environment(monkeypatch):
    from data_builders.runner import parse_shard
    from emollm.errors import ConfigError

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert parse_shard(None) == (2, 3)  # under accelerate launch / torchrun
    for bad in ("4/4", "x", "1/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
