"""2-process CPU training (gloo) under DDP, DeepSpeed ZeRO-2 and ZeRO-3: trains, saves, reloads.

Each case launches this file under ``torchrun --nproc_per_node 2`` with the shipped
``train_configs/deepspeed/*.json`` (DDP: ``ACCELERATE_USE_CPU=true``, as ``accelerate launch --cpu`` sets, else
accelerate runs one process per rank; DeepSpeed: without it, the loop asks accelerate for gloo). The driver
(``__main__`` below) calls the same ``train(cfg)`` as ``train.py``, then checks on every rank that the
world size is 2, and on rank 0 that the saved run dir reloads to the same logits as the trained,
still-distributed model (under ZeRO-3 its forward gathers the shards collectively).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def dataset(sample_dir, tmp_path_factory):
    from emollm.testing.datasets import build_tiny_training_dataset

    return build_tiny_training_dataset(sample_dir, tmp_path_factory.mktemp("dist_data"))


def _launch(dataset, out: Path, deepspeed: str | None) -> dict:
    ds, split = dataset
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ACCELERATE_USE_DEEPSPEED", None)
    if deepspeed:  # the loop asks for gloo itself; ACCELERATE_USE_CPU would make accelerate drop DeepSpeed
        env.pop("ACCELERATE_USE_CPU", None)
    else:  # what `accelerate launch --cpu` sets: real gloo processes instead of one process per rank
        env["ACCELERATE_USE_CPU"] = "true"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
           str(Path(__file__)), str(ds), split, str(out), deepspeed or ""]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=out.parent)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    report = json.loads((out / "dist_report.json").read_text())
    report["wall_s"] = time.perf_counter() - t0
    return report


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3"])
def test_two_process_training_saves_and_reloads(dataset, tmp_path, name):
    ds_config = None if name == "ddp" else str(ROOT / "train_configs" / "deepspeed" / f"{name}.json")
    out = tmp_path / "run"
    report = _launch(dataset, out, ds_config)
    assert report["world_sizes"] == [2, 2]  # both ranks saw a 2-process group
    assert report["distributed_type"] == ("MULTI_CPU" if name == "ddp" else "DEEPSPEED")
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["global_step"] == 2
    assert len(report["losses"]) == 3 and all(x == x for x in report["losses"])
    # the saved weights are complete (ZeRO-3 would save empty shards without gathering) and trained
    assert report["adapter_empty"] == [] and report["media_empty"] == []
    assert report["lora_b_nonzero"]
    assert report["max_logit_diff"] < 1e-4, report
    assert {"config.json", "adapter", "media_modules.safetensors"} <= {p.name for p in out.iterdir()}


@pytest.mark.slow
def test_torchrun_two_cpu_processes_runs_train_py(dataset, tmp_path):
    """The user's entry, ``train.py``, in 2 gloo processes (DDP). Not ``accelerate launch --num_processes 2
    --cpu``: accelerate 1.x then starts a single process (its ``--cpu`` launcher ignores the count)."""
    ds, split = dataset
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(30500 + os.getpid() % 1000), str(ROOT / "train.py"),
           "--config", str(ROOT / "train_configs" / "tiny_cpu.yaml"), "media.num_frames=4", f"data.dataset_dir={ds}",
           f"data.train_split={split}", "train.tasks=[emotion,reason]", "train.per_device_batch_size=1",
           f"run.output_dir={out}", "train.max_steps=2", "train.save_steps=2", "train.logging_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["world_size"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "media_modules.safetensors").is_file()


def _driver(dataset_dir: str, split: str, out_dir: str, deepspeed: str) -> None:
    import torch
    import torch.distributed as dist
    from accelerate.state import PartialState
    from safetensors.torch import load_file

    from emollm import config as cfglib
    from emollm.modeling.factory import load_run
    from emollm.testing.datasets import FAST
    from emollm.training import loop
    from emollm.training.data import EmotionCollator

    overrides = [*FAST, f"data.dataset_dir={dataset_dir}", f"data.train_split={split}", "train.tasks=[emotion,reason]",
                 f"run.output_dir={out_dir}", "train.max_steps=3", "train.save_steps=2", "train.logging_steps=1",
                 "train.per_device_batch_size=1", "train.lr=1e-2", "train.warmup_ratio=0.0"]
    if deepspeed:
        overrides.append(f"train.deepspeed={deepspeed}")
    cfg = cfglib.load(str(ROOT / "train_configs" / "tiny_cpu.yaml"), overrides)
    res = loop.train(cfg)
    state = PartialState()
    world = [0] * dist.get_world_size()
    dist.all_gather_object(world, dist.get_world_size())
    model, processor = res.model, res.processor
    model.eval()
    ds = loop._dataset(cfg, model, processor)
    batch = EmotionCollator(processor, model.config.modalities)([ds[0], ds[1]])
    inputs = {k: v for k, v in batch.items() if k not in ("ids", "labels")}
    with torch.no_grad():
        trained = model(**inputs).logits  # every rank: ZeRO-3 gathers the shards here
    if state.is_main_process:
        with loop._without_zero3_init():  # rank 0 alone: no zero.Init (a collective) here
            loaded, _ = load_run(out_dir)
        with torch.no_grad():
            reloaded = loaded(**inputs).logits
        adapter = load_file(str(Path(out_dir) / "adapter" / "adapter_model.safetensors"))
        media = load_file(str(Path(out_dir) / "media_modules.safetensors"))
        expected_media = dict(loaded.media.state_dict())
        report = {
            "world_sizes": world,
            "distributed_type": state.distributed_type.name,
            "losses": res.losses,
            "adapter_empty": sorted(k for k, v in adapter.items() if v.numel() == 0),
            "media_empty": sorted(k for k, v in media.items() if v.numel() == 0 or v.shape != expected_media[k].shape),
            "lora_b_nonzero": bool(adapter) and any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k),
            "max_logit_diff": float((trained - reloaded).abs().max()),
        }
        (Path(out_dir) / "dist_report.json").write_text(json.dumps(report, indent=1))
    dist.barrier()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _driver(*sys.argv[1:5])
