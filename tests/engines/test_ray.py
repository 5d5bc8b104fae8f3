"""The builder and the feature extractor on a local Ray cluster (2 CPUs, this machine): the same outputs as
the local engine byte for byte, a corrupt clip recorded, a killed worker retried, a killed driver resumed.

Skipped without Ray (pip install 'emollm[ray]'). The module shares one Ray instance (a few seconds to start).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'emollm[ray]')")

from data_builders.runner import PARTS_DIR, build  # noqa: E402
from emollm import config  # noqa: E402
from emollm.dataset.record import read_annotations  # noqa: E402
from emollm.engines import get_engine  # noqa: E402
from emollm.engines.ray_engine import RayEngine  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
FAST = ["build.au_fps=3"]

# What legitimately differs between two runs of the same inputs, on any engine (two local runs too):
RUN_SPECIFIC = {
    "config.yaml": "its '# written <time>' comment line",
    "summary.txt": "the 'wall seconds' and 'clips/s' rows",
    ".parts/*.json": "elapsed_s (the clip's own wall time)",
    "*.safetensors": "the order of the header's metadata keys (safetensors keeps them in a Rust HashMap: random "
                     "per process); the header's content and the tensor bytes are compared",
}  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance of 2 CPUs for the module; yields its address (engines find it running)."""
    engine = RayEngine(workers=2)
    engine.start()
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        engine.close()


def _running(label: str) -> list[int]:
    """PIDs of the Ray workers running a task named ``label`` now (Ray titles them ``ray::<name>``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(f"ray::{label}\0".encode()):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _copies(sample_dir: Path, root: Path, n: int) -> set[str]:
    root.mkdir()
    ids = {f"clip_{i:02d}" for i in range(n)}
    for cid in ids:
        shutil.copy(sample_dir / "single_face.mp4", root / f"{cid}.mp4")
    return ids


def _header(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _same(rel: Path, a: bytes, b: bytes) -> bool:
    """Equal but for RUN_SPECIFIC."""
    if a == b:
        return True
    if rel.name == "config.yaml":
        strip = re.compile(rb"^# written .*$", re.M)
        return strip.sub(b"", a) == strip.sub(b"", b)
    if rel.name == "summary.txt":
        timed = re.compile(rb"^(wall seconds|clips/s) .*$", re.M)
        return timed.sub(b"", a) == timed.sub(b"", b)
    if rel.parts[0] == PARTS_DIR:
        pa, pb = json.loads(a), json.loads(b)
        return {**pa, "elapsed_s": 0} == {**pb, "elapsed_s": 0}
    if rel.suffix == ".safetensors":
        return _header(a) == _header(b)  # dicts: key order aside; then the tensor bytes
    return False


def assert_same_tree(a: Path, b: Path) -> int:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    different = [str(rel) for rel in files_a if not _same(rel, (a / rel).read_bytes(), (b / rel).read_bytes())]
    assert not different, f"differ beyond {sorted(RUN_SPECIFIC)}: {different}"
    return len(files_a)


@pytest.fixture(scope="module")
def built(cluster, sample_dir, broken, tmp_path_factory):
    """The same four clips (a talking face under an awkward id, no face, a still, a truncated video) built
    by the local engine and by Ray."""
    root = tmp_path_factory.mktemp("ray_clips")
    (root / "sub dir").mkdir()
    shutil.copy(sample_dir / "single_face.mp4", root / "sub dir" / "clip é 1.mp4")
    shutil.copy(sample_dir / "no_face.mp4", root / "no_face.mp4")
    shutil.copy(sample_dir / "single_face.jpg", root / "single_face.jpg")
    shutil.copy(broken["truncated"], root / "truncated.mp4")
    out = {name: tmp_path_factory.mktemp(f"built_{name}") for name in ("local", "ray")}
    cfg = config.load(None, FAST)
    summaries = {"local": build(cfg, root, out["local"])}
    with get_engine("ray") as engine:
        summaries["ray"] = build(cfg, root, out["ray"], engine=engine)
    return out, summaries


def test_build_on_ray_writes_the_local_engines_files(built):
    out, summaries = built
    assert summaries["ray"].computed == summaries["local"].computed == 3
    n = assert_same_tree(out["local"], out["ray"])  # annotations, errors, manifest, aus/*.npz, instructions, parts
    assert n >= 12 and (out["ray"] / "aus" / "sub dir" / "clip é 1.npz").is_file()
    # the corrupt clip failed on a Ray worker, with its reason, and the run went on
    errors = [json.loads(line) for line in (out["ray"] / "errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(e["id"], e["stage"]) for e in errors] == [("truncated", "probe")] and errors[0]["reason"]
    assert summaries["ray"].failed == 1 and summaries["ray"].records == 3


def test_features_on_ray_write_the_local_engines_cache(built, tmp_path):
    from emollm.features.extract import extract_features
    from emollm.testing.tiny import build_tiny_models

    build_tiny_models()
    dataset = built[0]["local"]
    cache = tmp_path / "cache"  # the same folder for both (the resolved config names it), moved aside between
    cfg = config.load("tiny_cpu", ["media.num_frames=4", "features.batch_size=2", f"features.cache_dir={cache}"])
    for name in ("local", "ray"):
        with get_engine(name) as engine:
            summary = extract_features(cfg, dataset, engine=engine)  # ray: two batches, two tasks
        assert summary.failed == 0 and summary.entries_computed == 9 and summary.entries_absent == 3
        cache.rename(tmp_path / name)
    n = assert_same_tree(tmp_path / "local", tmp_path / "ray")
    assert n >= 12 + 4  # entries and absent marks, encoder.json per encoder, config.yaml, errors.jsonl


def test_a_worker_killed_mid_clip_is_retried_nothing_lost_or_doubled(cluster, sample_dir, tmp_path):
    ids = _copies(sample_dir, tmp_path / "clips", 6)
    out = tmp_path / "ds"
    killed: list[int] = []
    stop = threading.Event()

    def kill_one_worker() -> None:  # once a clip is done and others are in flight: SIGKILL a busy worker
        parts = out / PARTS_DIR
        while not stop.is_set() and not killed:
            busy = _running("emollm-build")
            if busy and parts.is_dir() and any(parts.glob("*.json")):
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
            time.sleep(0.005)

    cfg = config.load(None, FAST)
    watcher = threading.Thread(target=kill_one_worker)
    with get_engine("ray", max_retries=2) as engine:
        engine.start()
        watcher.start()
        try:
            summary = build(cfg, tmp_path / "clips", out, engine=engine)
        finally:
            stop.set()
            watcher.join()
        assert killed, "no busy worker was found to kill"
        assert (summary.computed, summary.failed) == (6, 0)  # Ray ran the killed clip again
        records = read_annotations(out / "annotations.jsonl")
        assert sorted(r["id"] for r in records) == sorted(ids)  # each clip exactly once
        assert len(list((out / PARTS_DIR).glob("*.json"))) == 6
        assert (out / "errors.jsonl").read_text() == ""
        again = build(cfg, tmp_path / "clips", out, engine=engine)
        assert (again.reused, again.computed) == (6, 0)


def _summary_rows(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^(\S.*?)\s{2,}(\S.*)$", text, re.M)}


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _title(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.parametrize("where", ["cluster", "own"])
def test_the_driver_killed_mid_run_then_the_same_command_loses_and_doubles_nothing(where, cluster, sample_dir, tmp_path):
    """``cluster``: the driver joined a running cluster (--address), which outlives it; ``own``: the driver
    started its own Ray instance (no --address), which dies with it."""
    n = 10
    ids = _copies(sample_dir, tmp_path / "clips", n)
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "emollm.cli.main", "--quiet", "build", str(tmp_path / "clips"), "--out", str(out),
           "--engine", "ray", *(["--address", cluster] if where == "cluster" else ["--workers", "2"]), "build.au_fps=5"]
    env = {**os.environ, "EMOLLM_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = out / PARTS_DIR
    started: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if parts.is_dir() and len(list(parts.glob("*.json"))) >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the build finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
        started = _descendants(proc.pid)  # its own Ray instance (own), nothing (cluster: the workers are the raylet's)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at, killed_wall = time.monotonic(), time.time()
        # no task of the dead driver goes on (Ray ends them; on its host each checks the driver before a write)
        while _running("emollm-build") and time.monotonic() - killed_at < 30:
            time.sleep(0.05)
        assert not _running("emollm-build"), "the dead driver's tasks kept running"
        time.sleep(0.5)
        late = [p.name for p in parts.glob("*.json") if p.stat().st_mtime > killed_wall + 0.05]
        assert not late, f"parts written after the driver died: {late}"
        done_before = len(list(parts.glob("*.json")))
        assert 2 <= done_before < n and not (out / "annotations.jsonl").exists()
        if where == "own":  # its Ray instance goes down with it: GCS, raylet, workers
            # Ray 2.60 leaves its two agents behind (they watch a raylet that is gone, and linger): not our work.
            # An idle pooled worker notices its raylet is gone on its next heartbeat, so it gets a few seconds.
            agents = {b"ray::DashboardAgent", b"ray::RuntimeEnvAgent"}
            deadline = time.monotonic() + 20
            while True:
                titles = {_title(p) for p in started if _alive(p)} - {None}
                if titles <= agents or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert titles <= agents, titles

        rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        rows = _summary_rows(rerun.stdout)
        assert (int(rows["reused"]), int(rows["analysed"]), int(rows["failed"])) == (done_before, n - done_before, 0)
        records = read_annotations(out / "annotations.jsonl")
        assert sorted(r["id"] for r in records) == sorted(ids)  # each clip exactly once
        assert len(list(parts.glob("*.json"))) == n and all((out / r["aus_file"]).is_file() for r in records)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in started:  # what this test started and Ray left (see above)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_an_item_whose_worker_always_dies_comes_back_lost_and_errors_are_raised(cluster):
    import math

    from emollm.engines import Lost

    with get_engine("ray", max_retries=1) as engine:
        assert sorted(engine.map(abs, [-1, 2, -3])) == [(0, 1), (1, 2), (2, 3)]
        [(index, lost)] = list(engine.map(os._exit, [3], label="emollm-test"))  # the worker exits: every attempt
        assert index == 0 and isinstance(lost, Lost) and lost.error_type == "WorkerCrashedError" and lost.attempts == 2
        with pytest.raises(ValueError, match="math domain"):  # the item's own error: raised, not retried
            list(engine.map(math.sqrt, [-1.0]))
        assert "ray, a running Ray instance: 1 node(s), 2 CPUs" in engine.describe()
