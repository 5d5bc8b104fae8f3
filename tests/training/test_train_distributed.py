"""2-process CPU training (gloo) under DDP, DeepSpeed ZeRO-2 and ZeRO-3: trains, saves, reloads, resumes.

Each case launches this file under ``torchrun --nproc_per_node 2`` with the shipped
``train_configs/deepspeed/*.json`` (DDP: ``ACCELERATE_USE_CPU=true``, as ``accelerate launch --cpu`` sets, else
accelerate runs one process per rank; DeepSpeed: without it, the loop asks accelerate for gloo). The driver
(``__main__`` below) calls the same ``train(cfg)`` as ``train.py``, then checks on every rank that the
world size is 2, and on rank 0 that the saved run dir reloads to the same logits as the trained,
still-distributed model (under ZeRO-3 its forward gathers the shards collectively). Under DeepSpeed it
then resumes from ``checkpoint-2`` into a second dir (same processes). Per-step losses and gradient
norms must equal those of one process holding both ranks' samples (``per_device_batch_size=2``): the
loss is per target token of the whole step, over all ranks. ZeRO-3 runs with gradient checkpointing
(reentrant under ZeRO-3 + LoRA) and must still match.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from emollm.testing.distributed import launch, reset_accelerate_state

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def dataset(sample_dir, tmp_path_factory):
    from emollm.testing.datasets import build_tiny_training_dataset

    return build_tiny_training_dataset(sample_dir, tmp_path_factory.mktemp("dist_data"))


# The one configuration every case trains (the driver adds per_device_batch_size=1 and its own options)
COMMON = ["train.tasks=[emotion,reason]", "train.max_steps=3", "train.save_steps=2", "train.logging_steps=1",
          "train.lr=1e-2", "train.warmup_ratio=0.0", "train.lora.dropout=0.0"]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> dict:
    """One process with both ranks' samples in one batch (the sampler gives the same global batches)."""
    from emollm import config as cfglib
    from emollm.testing.datasets import FAST
    from emollm.training import loop

    ds, split = dataset
    out = tmp_path_factory.mktemp("reference") / "run"
    cfg = cfglib.load(str(ROOT / "train_configs" / "tiny_cpu.yaml"),
                      [*FAST, f"data.dataset_dir={ds}", f"data.train_split={split}", f"run.output_dir={out}",
                       *COMMON, "train.per_device_batch_size=2"])
    res = loop.train(cfg)
    rows = [json.loads(x) for x in (out / "logs" / loop.LOG_FILE).read_text().splitlines()]
    return {"losses": res.losses, "grad_norms": [r["grad_norm"] for r in rows if r["kind"] == "train"]}


def _launch(dataset, out: Path, deepspeed: str | None, *extra: str) -> dict:
    ds, split = dataset
    t0 = time.perf_counter()
    launch(Path(__file__), [ds, split, out, deepspeed or "", *extra], deepspeed=bool(deepspeed), cwd=out.parent,
           timeout=TIMEOUT_S, port_base=29500)
    report = json.loads((out / "dist_report.json").read_text())
    report["wall_s"] = time.perf_counter() - t0
    return report


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3"])
def test_two_process_training_saves_reloads_and_resumes(dataset, reference, tmp_path, name):
    ds_config = None if name == "ddp" else str(ROOT / "train_configs" / "deepspeed" / f"{name}.json")
    out = tmp_path / "run"
    report = _launch(dataset, out, ds_config, *(["train.gradient_checkpointing=true"] if name == "zero3" else []))
    assert report["world_sizes"] == [2, 2]  # both ranks saw a 2-process group
    assert report["distributed_type"] == ("MULTI_CPU" if name == "ddp" else "DEEPSPEED")
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert (state["world_size"], state["per_device_batch_size"], state["gradient_accumulation_steps"]) == (2, 1, 1)
    assert state["global_step"] == 2
    # the loss per target token over both ranks: what one process with the whole batch sees, step after step
    # (grad norms too: a wrong loss scale would show there, though Adam's update would hide it)
    assert report["losses"] == pytest.approx(reference["losses"], abs=1e-4), (report["losses"], reference)
    assert report["grad_norms"] == pytest.approx(reference["grad_norms"], rel=1e-3), (report["grad_norms"], reference)
    assert reference["losses"][1] < reference["losses"][0]  # it trains: the check can fail
    # the saved weights are complete (ZeRO-3 would save empty shards without gathering) and trained
    assert report["adapter_empty"] == [] and report["media_empty"] == []
    assert report["lora_b_nonzero"]
    assert report["max_logit_diff"] < 1e-4, report
    assert {"config.json", "adapter", "media_modules.safetensors"} <= {p.name for p in out.iterdir()}
    if name == "zero3":  # LoRA under ZeRO-3: reentrant checkpointing, and it still trains the same
        assert report["checkpointing"] == {"use_reentrant": True}
    if name == "ddp":
        return
    # the checkpoint holds what training changes (adapter, media modules), never the frozen backbone
    assert report["checkpoint_module_keys"] == report["trainable_names"]
    assert report["checkpoint_model_bytes"] < 0.5 * report["model_fp32_bytes"], report
    # resumed from checkpoint-2 (a fresh engine in the same processes): step 3 as in the uninterrupted run
    assert report["resumed_losses"] == pytest.approx(report["losses"], abs=1e-5), report


@pytest.mark.slow
def test_torchrun_two_cpu_processes_runs_train_py(dataset, tmp_path):
    """The user's entry, ``train.py``, in 2 gloo processes (DDP). Not ``accelerate launch --num_processes 2
    --cpu``: accelerate 1.x then starts a single process (its ``--cpu`` launcher ignores the count)."""
    ds, split = dataset
    out = tmp_path / "run"
    launch(ROOT / "train.py", ["--config", ROOT / "train_configs" / "tiny_cpu.yaml", "media.num_frames=4",
                               f"data.dataset_dir={ds}", f"data.train_split={split}", "train.tasks=[emotion,reason]",
                               "train.per_device_batch_size=1", f"run.output_dir={out}", "train.max_steps=2",
                               "train.save_steps=2", "train.logging_steps=1"],
           deepspeed=False, cwd=tmp_path, timeout=TIMEOUT_S, port_base=30500)
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["world_size"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "media_modules.safetensors").is_file()


def _driver(dataset_dir: str, split: str, out_dir: str, deepspeed: str, *extra: str) -> None:
    import torch
    import torch.distributed as dist
    from accelerate.state import PartialState
    from safetensors.torch import load_file

    from emollm import config as cfglib
    from emollm.modeling.factory import load_run
    from emollm.testing.datasets import FAST
    from emollm.training import loop
    from emollm.training.data import EmotionCollator

    overrides = [*FAST, f"data.dataset_dir={dataset_dir}", f"data.train_split={split}", f"run.output_dir={out_dir}",
                 *COMMON, "train.per_device_batch_size=1", *extra]
    if deepspeed:
        overrides.append(f"train.deepspeed={deepspeed}")
    cfg = cfglib.load(str(ROOT / "train_configs" / "tiny_cpu.yaml"), overrides)
    res = loop.train(cfg)
    trainable = sorted(n for n, p in res.model.named_parameters() if p.requires_grad)
    checkpointing = sorted({frozenset(m._gradient_checkpointing_func.keywords.items())
                            for m in res.model.modules() if hasattr(m, "_gradient_checkpointing_func")}, key=str)
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
            "grad_norms": [r["grad_norm"] for r in map(json.loads, (Path(out_dir) / "logs" / loop.LOG_FILE).read_text()
                                                      .splitlines()) if r["kind"] == "train"],
            "checkpointing": dict(checkpointing[0]) if checkpointing else None,
            "trainable_names": trainable,
            "model_fp32_bytes": sum(p.numel() * 4 for p in loaded.parameters()),
        }
        if deepspeed:
            states = sorted((Path(out_dir) / "checkpoint-2" / "pytorch_model").glob("*model_states.pt"))
            report["checkpoint_model_bytes"] = sum(f.stat().st_size for f in states)
            report["checkpoint_module_keys"] = sorted(torch.load(states[0], map_location="cpu", weights_only=False)["module"])
    if deepspeed:  # resume from checkpoint-2 into another dir: a second engine in these processes
        reset_accelerate_state()
        again = cfglib.load(str(ROOT / "train_configs" / "tiny_cpu.yaml"),
                            [*overrides, f"run.output_dir={out_dir}-resumed", f"train.resume={out_dir}/checkpoint-2"])
        resumed = loop.train(again)
        if state.is_main_process:
            report["resumed_losses"] = resumed.losses
    if state.is_main_process:
        (Path(out_dir) / "dist_report.json").write_text(json.dumps(report, indent=1))
    dist.barrier()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _driver(*sys.argv[1:])
