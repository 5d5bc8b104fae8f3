"""The engine seam (emollm.engines) without Ray: the registry, the local engine, the CLI options, and what
the builder and the feature extractor do with an item an engine gave up on (Lost)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from emollm.cli import main as cli
from emollm.engines import ONE_CPU, Engine, Lost, Resources, engine_names, get_engine, register_engine
from emollm.engines.local import LocalEngine
from emollm.errors import ConfigError, MissingDependencyError


class GivesUpOn(Engine):
    """The local engine, except that the items ``lose(item)`` picks come back Lost (as a Ray worker that
    died on every attempt would)."""

    name = "gives-up"

    def __init__(self, lose):
        self.lose = lose
        self.inner = LocalEngine(1)

    def map(self, fn, items, *, resources=ONE_CPU, setup=None, label="emollm"):
        items = list(items)
        keep = [k for k, item in enumerate(items) if not self.lose(item)]
        for k in range(len(items)):
            if k not in keep:
                yield k, Lost("WorkerCrashedError", "The worker died unexpectedly while executing this task.", attempts=4)
        for j, result in self.inner.map(fn, [items[k] for k in keep], resources=resources, setup=setup, label=label):
            yield keep[j], result


def test_registry_gives_local_by_default_and_names_the_choices():
    assert {"local", "ray"} <= set(engine_names())
    engine = get_engine()
    assert isinstance(engine, LocalEngine) and engine.workers == 1
    assert get_engine(engine) is engine  # an engine instance passes through
    with pytest.raises(ConfigError, match="unknown engine 'spark'") as info:
        get_engine("spark")
    assert "local" in info.value.hint and "ray" in info.value.hint
    register_engine("gives-up", lambda **kw: GivesUpOn(lambda item: False))
    try:
        assert get_engine("gives-up").name == "gives-up"
    finally:
        from emollm.engines import _REGISTRY

        _REGISTRY.pop("gives-up")


def test_local_engine_in_process_and_in_a_pool():
    inline = list(LocalEngine(1).map(abs, [-1, 2, -3]))
    assert inline == [(0, 1), (1, 2), (2, 3)]  # in order, in this process
    pooled = list(LocalEngine(2).map(abs, [-1, 2, -3]))  # spawned processes, as they finish
    assert sorted(pooled) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="math domain"):  # the item's own error reaches the caller
        import math

        list(LocalEngine(1).map(math.sqrt, [-1.0]))
    assert Resources(cpus=2).threads == 2 and Resources(cpus=0.5).threads == 1
    with pytest.raises(ConfigError, match="cpus > 0"):
        Resources(cpus=0)


def test_ray_options_need_the_ray_engine_and_ray_itself(tmp_path, monkeypatch, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    code = cli.main(["--quiet", "build", str(clips), "--out", str(tmp_path / "ds"), "--address", "10.0.0.1:6379"])
    assert code == 2 and "--address go(es) with --engine ray" in capsys.readouterr().err
    code = cli.main(["--quiet", "features", "--config", "tiny_cpu", str(tmp_path), "--gpus-per-task", "1"])
    assert code == 2 and "--gpus-per-task go(es) with --engine ray" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(MissingDependencyError) as info:
        get_engine("ray").start()
    assert info.value.hint == "pip install 'emollm[ray]'"


def test_an_unreachable_cluster_is_one_line_at_once(sample_dir, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'emollm[ray]')")
    clips = _stills(sample_dir, tmp_path / "clips", ["a"])
    code = cli.main(["--quiet", "build", str(clips), "--out", str(tmp_path / "ds"), "--engine", "ray",
                     "--address", "127.0.0.1:1"])  # nothing listens on port 1: no minutes of Ray's own retries
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach the Ray cluster at '127.0.0.1:1'" in err and "ray start --head" in err
    assert not (tmp_path / "ds" / ".parts").exists() or not any((tmp_path / "ds" / ".parts").iterdir())


def test_a_request_no_node_can_meet():
    from emollm.engines.ray_engine import RayEngine

    class FakeRay:  # only what _in_flight reads
        @staticmethod
        def cluster_resources():
            return {"CPU": 2.0}

    engine = RayEngine()
    assert engine._in_flight(FakeRay, Resources(cpus=1)) == 4  # 2x what runs at once: a queue per worker
    assert engine._in_flight(FakeRay, Resources(cpus=0.5)) == 8
    engine._owned = True  # a local instance this engine started: no node will ever join it
    with pytest.raises(ConfigError, match="has 2 CPUs and 0 GPUs; a task asks 1 CPUs and 1 GPUs"):
        engine._in_flight(FakeRay, Resources(cpus=1, gpus=1))
    engine._owned = False  # a cluster: an autoscaler may add the node; the tasks wait, with a warning
    assert engine._in_flight(FakeRay, Resources(cpus=1, gpus=1)) == 2
    assert RayEngine(address="h:1", workers=3)._in_flight(FakeRay, Resources(cpus=1)) == 3  # --workers caps


def test_feature_task_resources_follow_the_device():
    from emollm import config
    from emollm.features.extract import task_resources

    class Named:
        def __init__(self, name):
            self.name = name

    ray, local = Named("ray"), Named("local")
    cpu = config.load("tiny_cpu", ["features.device=cpu"])
    cuda = config.load("tiny_cpu", ["features.device=cuda"])
    assert task_resources(cpu, ray) == Resources(cpus=1, gpus=0)
    assert task_resources(cuda, ray) == Resources(cpus=1, gpus=1)  # one GPU per task unless told
    assert task_resources(cuda, ray, cpus_per_task=4, gpus_per_task=0.25) == Resources(cpus=4, gpus=0.25)
    assert task_resources(cuda, local, gpus_per_task=0) == Resources(cpus=1, gpus=0)  # local: this process's device
    with pytest.raises(ConfigError, match="would see no GPU"):
        task_resources(cuda, ray, gpus_per_task=0)


def _stills(sample_dir: Path, root: Path, names: list[str]) -> Path:
    root.mkdir()
    for name in names:
        shutil.copy(sample_dir / "single_face.jpg", root / f"{name}.jpg")
    return root


def test_a_clip_whose_worker_always_died_is_an_error_then_retried(sample_dir, tmp_path):
    from data_builders.runner import LOST_STAGE, build
    from emollm import config

    clips = _stills(sample_dir, tmp_path / "clips", ["a", "b"])
    out = tmp_path / "ds"
    cfg = config.load(None, [])
    first = build(cfg, clips, out, engine=GivesUpOn(lambda args: args[0].id == "b"))
    assert (first.computed, first.failed, first.records) == (1, 1, 1)  # the run went on
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert errors == [{"id": "b", "path": "../clips/b.jpg", "stage": LOST_STAGE, "error_type": "WorkerCrashedError",
                       "reason": "The worker died unexpectedly while executing this task. (4 attempt(s))"}]
    # a worker's death is not the file's fault: the next run tries the clip again (a decode error is kept)
    again = build(cfg, clips, out)
    assert (again.reused, again.computed, again.failed, again.records) == (1, 1, 0, 2)
    assert (out / "errors.jsonl").read_text(encoding="utf-8") == ""


@pytest.mark.slow
def test_a_feature_batch_whose_worker_always_died_fails_its_clips_then_is_redone(sample_dir, tmp_path):
    from data_builders.runner import build
    from emollm import config
    from emollm.features.extract import extract_features
    from emollm.testing.tiny import build_tiny_models

    build_tiny_models()
    clips = _stills(sample_dir, tmp_path / "clips", ["a", "b"])
    dataset = tmp_path / "ds"
    build(config.load(None, []), clips, dataset)
    cfg = config.load("tiny_cpu", ["features.batch_size=1", f"features.cache_dir={tmp_path / 'cache'}"])
    first = extract_features(cfg, dataset, engine=GivesUpOn(lambda chunk: chunk[0][0]["id"] == "b"))
    assert first.failed == 1 and first.entries_computed > 0
    errors = [json.loads(line) for line in (tmp_path / "cache" / "errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["stage"], e["error"]) for e in errors] == [("b", "worker", "WorkerCrashedError")]
    again = extract_features(cfg, dataset)
    assert again.failed == 0 and again.entries_computed == first.entries_computed  # b's entries, now
    assert (tmp_path / "cache" / "errors.jsonl").read_text() == ""
