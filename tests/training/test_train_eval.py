"""Evaluation during training (train.eval_steps): eval loss + generated labels -> WAR/UAR/WAF in the
train log, per-step prediction files, TensorBoard scalars, and a resumed run that still matches."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from emollm import config as cfglib
from emollm.errors import ConfigError
from emollm.testing.datasets import FAST, build_tiny_training_dataset
from emollm.training import loop

ROOT = Path(__file__).resolve().parents[2]
EVAL_SPLIT = "val"
VAL_IDS = ["single_face_val", "single_face_val2", "still_val"]
METRICS = ("eval_loss", "eval_war", "eval_uar", "eval_waf", "eval_invalid_rate")


@pytest.fixture(scope="module")
def dataset(sample_dir, tmp_path_factory):
    """The tiny dataset (a clip and a still, both in one split) plus a validation split ``val`` of 3
    clips: copies of the records (``<id>_val``, and ``single_face_val2``) with their feature-cache
    entries (same features: the point here is the plumbing, not generalisation). 3 clips on 2 ranks
    give uneven shards."""
    root, split = build_tiny_training_dataset(sample_dir, tmp_path_factory.mktemp("eval_data"))
    annotations = root / "annotations.jsonl"
    records = [json.loads(line) for line in annotations.read_text().splitlines() if line.strip()]
    copies = {f"{r['id']}_val": r for r in records} | {"single_face_val2": records[0]}
    assert records[0]["id"] == "single_face"
    annotations.write_text("".join(json.dumps(r) + "\n" for r in records)
                           + "".join(json.dumps({**r, "id": new, "split": EVAL_SPLIT}) + "\n" for new, r in copies.items()))
    for new, r in copies.items():
        for entry in [*root.glob(f"features/*/*/{r['id']}.safetensors"), *root.glob(f"features/*/*/{r['id']}.absent")]:
            _copy_entry(entry, entry.with_name(new + entry.suffix), new)
    return root, split


def _copy_entry(src, dst, clip_id):
    """A cache entry copied to another clip id: an entry records its clip, so the copy is re-labelled."""
    if src.suffix == ".absent":
        dst.write_text(json.dumps({**json.loads(src.read_text()), "clip_id": clip_id}))
        return
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as fh:
        tensors, metadata = {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    save_file(tensors, str(dst), metadata={**metadata, "clip_id": clip_id})


def _cfg(dataset, out_dir, *overrides):
    root, split = dataset
    return cfglib.load("tiny_cpu", [*FAST, f"data.dataset_dir={root}", f"data.train_split={split}",
                                    f"data.eval_split={EVAL_SPLIT}", "train.tasks=[emotion]", f"run.output_dir={out_dir}",
                                    "train.logging_steps=1", "train.save_steps=100", "train.eval_max_new_tokens=4",
                                    *overrides])


def _log(run):
    return [json.loads(line) for line in (run / "logs" / loop.LOG_FILE).read_text().splitlines()]


def test_eval_rows_metrics_and_predictions(dataset, tmp_path):
    run = tmp_path / "run"
    cfg = _cfg(dataset, run, "train.max_steps=4", "train.eval_steps=2", "train.lr=1e-2", "train.warmup_ratio=0",
               "train.lr_scheduler=constant", "train.lora.dropout=0.0")
    torch.manual_seed(0)
    res = loop.train(cfg)
    rows = _log(run)
    evals = [r for r in rows if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]
    for row in evals:
        assert set(METRICS) <= set(row), row
        assert math.isfinite(row["eval_loss"]) and row["eval_loss"] > 0
        assert all(0.0 <= row[k] <= 1.0 for k in METRICS if k != "eval_loss"), row
        assert row["eval_samples"] == 3
        # the tiny dataset's clips have the builder's pseudo-labels only: the row says so
        assert row["eval_reference_source"] == "pseudo_label" and row["eval_references"] == {"pseudo_label": 3}
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]  # the eval copies are the training clips: loss falls
    labels = {r["id"]: r["pseudo_label"] for r in map(json.loads, (dataset[0] / "annotations.jsonl").read_text().splitlines())}
    for step in (2, 4):
        preds = [json.loads(x) for x in (run / "logs" / f"eval_predictions-{step}.jsonl").read_text().splitlines()]
        assert sorted(p["id"] for p in preds) == VAL_IDS
        assert all({"id", "text", "label", "reference"} <= set(p) for p in preds)
        assert all(p["reference"] == labels[p["id"]] and p["reference_source"] == "pseudo_label" for p in preds)
    assert res.model.training  # back in training mode after the evaluation
    assert len(res.losses) == 4


def test_eval_scores_human_labels_and_pseudo_labels_apart(dataset, tmp_path):
    """One eval clip with a person's label, two with the builder's pseudo-label only: the headline eval_war
    is against the human label; the pseudo-labels get their own eval_pseudo_label_* metrics."""
    root = tmp_path / "data"
    shutil.copytree(dataset[0], root)
    records = [json.loads(line) for line in (root / "annotations.jsonl").read_text().splitlines() if line.strip()]
    for r in records:
        if r["id"] == "still_val":
            r["label"] = "angry"
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tmp_path / "run"
    loop.train(_cfg((root, dataset[1]), run, "train.max_steps=1", "train.eval_steps=1", "train.eval_loss=false"))
    (row,) = [r for r in _log(run) if r["kind"] == "eval"]
    assert row["eval_reference_source"] == "label" and row["eval_references"] == {"label": 1, "pseudo_label": 2}
    preds = {p["id"]: p for p in map(json.loads, (run / "logs" / "eval_predictions-1.jsonl").read_text().splitlines())}
    assert preds["still_val"]["reference"] == "angry" and preds["still_val"]["reference_source"] == "label"
    assert row["eval_war"] == float(preds["still_val"]["label"] == "angry")  # one clip: right or wrong
    pseudo = [p for p in preds.values() if p["reference_source"] == "pseudo_label"]
    assert row["eval_pseudo_label_war"] == pytest.approx(sum(p["label"] == p["reference"] for p in pseudo) / 2)
    assert "eval_all_war" not in row  # pooled only with evaluate.combine_sources=true


def test_eval_with_gradient_checkpointing_generates(dataset, tmp_path):
    """Checkpointing turns the KV cache off for training; generation still works (cache on, eval mode)."""
    run = tmp_path / "run"
    cfg = _cfg(dataset, run, "train.max_steps=1", "train.eval_steps=1", "train.gradient_checkpointing=true",
               "train.eval_loss=false", "train.eval_max_samples=1")
    loop.train(cfg)
    (row,) = [r for r in _log(run) if r["kind"] == "eval"]
    assert row["eval_samples"] == 1 and "eval_loss" not in row and 0 <= row["eval_war"] <= 1
    (pred,) = [json.loads(x) for x in (run / "logs" / "eval_predictions-1.jsonl").read_text().splitlines()]
    assert pred["text"]  # generated something
    assert loop.list_checkpoints(run) == []


def test_missing_eval_split_fails_before_the_first_step(dataset, tmp_path):
    cfg = _cfg(dataset, tmp_path / "run", "train.max_steps=2", "train.eval_steps=1", "data.eval_split=test")
    with pytest.raises(ConfigError) as err:
        loop.train(cfg)
    assert "'test'" in err.value.message and "data.eval_split" in err.value.message
    assert "fine" in err.value.hint and EVAL_SPLIT in err.value.hint  # the dataset's splits are listed
    assert not (tmp_path / "run").exists()  # nothing was trained or written
    loop.check_eval_split(_cfg(dataset, tmp_path / "run", "data.eval_split=test"))  # no eval_steps: no check


def test_resume_with_eval_matches_uninterrupted(dataset, tmp_path):
    common = ["train.max_steps=5", "train.lr=1e-3", "train.save_steps=2", "train.warmup_ratio=0.2",
              "train.tasks=[emotion,reason]", "train.lora.dropout=0.1", "train.eval_max_samples=1"]
    straight = loop.train(_cfg(dataset, tmp_path / "a", *common, "train.eval_steps=2"))  # evals at 2, 4, 5
    first = loop.train(_cfg(dataset, tmp_path / "b", *common, "train.eval_steps=2"), stop_after_step=3)
    assert first.stopped_early
    torch.manual_seed(1234)
    # Resumed with evals at 5 only: straight's eval between steps 4 and 5 has no counterpart here, so
    # equal losses at step 5 also show that an evaluation leaves the RNG that LoRA dropout draws from alone.
    resumed = loop.train(_cfg(dataset, tmp_path / "b", *common, "train.eval_steps=3", "train.resume=latest"))
    assert max(abs(x - y) for x, y in zip(straight.losses, resumed.losses, strict=True)) < 1e-5
    assert straight.losses[0] != straight.losses[3]  # the check can fail: losses move
    assert [r["step"] for r in _log(tmp_path / "a") if r["kind"] == "eval"] == [2, 4, 5]  # the last step too
    assert [r["step"] for r in _log(tmp_path / "b") if r["kind"] == "eval"] == [2, 5]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed (pip install tensorboard, or emollm[dev])")
def test_tensorboard_events_hold_train_and_eval_scalars(dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    loop.train(_cfg(dataset, run, "train.max_steps=2", "train.eval_steps=2", "train.report_to=[tensorboard]",
                    "train.eval_max_samples=1", "run.name=tb"))
    events = list((run / "logs").rglob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(run) for p in run.rglob("*"))
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "eval_loss", "eval_war", "eval_uar", "eval_waf", "eval_invalid_rate"} <= tags, tags
    assert [e.step for e in acc.Scalars("eval_war")] == [2]


@pytest.mark.slow
def test_two_process_zero3_evaluation(dataset, tmp_path):
    """ZeRO-3 on 2 gloo processes: both ranks generate (synced_gpus), 3 clips shard unevenly (one rank
    runs a repeat), the results are gathered once each, and training goes on after the evaluation."""
    root, split = dataset
    out = tmp_path / "run"
    from emollm.testing.distributed import launch

    launch(Path(__file__), [root, split, out], deepspeed=True, cwd=tmp_path, timeout=240, port_base=32500)
    report = json.loads((out / "eval_report.json").read_text())
    assert report["world_sizes"] == [2, 2] and report["distributed_type"] == "DEEPSPEED"
    assert len(report["losses"]) == 3 and all(math.isfinite(x) for x in report["losses"])
    evals = [r for r in _log(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 3]
    for row in evals:
        assert row["eval_samples"] == 3 and math.isfinite(row["eval_loss"]), row
        assert all(0.0 <= row[k] <= 1.0 for k in METRICS if k != "eval_loss"), row
        preds = [json.loads(x) for x in (out / "logs" / f"eval_predictions-{row['step']}.jsonl").read_text().splitlines()]
        assert sorted(p["id"] for p in preds) == VAL_IDS  # each clip once: the repeat was dropped


def _driver(dataset_dir: str, split: str, out_dir: str) -> None:
    import torch.distributed as dist
    from accelerate.state import PartialState

    cfg = cfglib.load(str(ROOT / "train_configs" / "tiny_cpu.yaml"), [
        *FAST, f"data.dataset_dir={dataset_dir}", f"data.train_split={split}", f"data.eval_split={EVAL_SPLIT}",
        "train.tasks=[emotion,reason]", f"run.output_dir={out_dir}", "train.max_steps=3", "train.save_steps=100",
        "train.logging_steps=1", "train.per_device_batch_size=1", "train.eval_steps=2", "train.eval_max_new_tokens=4",
        "predict.batch_size=1", f"train.deepspeed={ROOT / 'train_configs' / 'deepspeed' / 'zero3.json'}",
    ])  # fmt: skip
    res = loop.train(cfg)
    world = [0] * dist.get_world_size()
    dist.all_gather_object(world, dist.get_world_size())
    state = PartialState()
    if state.is_main_process:
        report = {"world_sizes": world, "distributed_type": state.distributed_type.name, "losses": res.losses}
        (Path(out_dir) / "eval_report.json").write_text(json.dumps(report))
    dist.barrier()


if __name__ == "__main__":
    _driver(*sys.argv[1:4])
