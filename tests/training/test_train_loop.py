"""The training loop: LoRA training on the tiny built dataset, checkpoints, exact resume, run dir."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.errors import ConfigError, EmollmError
from emollm.testing.datasets import FAST, build_tiny_training_dataset
from emollm.training import loop

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(sample_dir, tmp_path_factory):
    return build_tiny_training_dataset(sample_dir, tmp_path_factory.mktemp("loop_data"))


def _cfg(dataset, out_dir, *overrides):
    ds, split = dataset
    eval_split = "fine" if split != "fine" else "coarse"
    return cfglib.load("tiny_cpu", [*FAST, f"data.dataset_dir={ds}", f"data.train_split={split}",
                                     f"data.eval_split={eval_split}", "train.tasks=[emotion]",
                                     f"run.output_dir={out_dir}", "train.lora.dropout=0.1", *overrides])


def test_trains_lora_and_media_and_saves_a_loadable_run(dataset, tmp_path):
    from emollm.modeling.factory import load_run

    cfg = _cfg(dataset, tmp_path / "run", "train.max_steps=8", "train.lr=1e-2", "train.warmup_ratio=0.0",
               "train.lr_scheduler=constant", "train.logging_steps=2", "train.save_steps=100")
    torch.manual_seed(0)
    res = loop.train(cfg)
    assert len(res.losses) == 8 and all(torch.isfinite(torch.tensor(res.losses)))
    assert res.losses[-1] < res.losses[0] - 0.5 and res.losses[3] < res.losses[0], res.losses
    model = res.model
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # LoRA-B starts at zero
    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "config.yaml", "adapter", "logs"} <= names and not any(n.startswith("checkpoint-") for n in names)
    metrics = [json.loads(x) for x in (run / "logs" / loop.LOG_FILE).read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4, 6, 8]
    assert all(m["tokens_per_s"] > 0 and m["samples_per_s"] > 0 and 0 < m["real_token_fraction"] <= 1 for m in metrics)
    # the run dir gives the same logits as the in-memory model, each on the batch it builds itself
    # (the loaded run must build the prompts training built: same modality order, same media)
    from emollm.training.data import EmotionCollator

    def logits(m, proc):
        ds = loop._dataset(cfg, m, proc)
        batch = EmotionCollator(proc, m.config.modalities)([ds[0], ds[1]])
        m.eval()
        with torch.no_grad():
            return batch["input_ids"], m(**{k: v for k, v in batch.items() if k not in ("ids", "labels")}).logits

    loaded, processor = load_run(run)
    (ids_a, a), (ids_b, b) = logits(model, res.processor), logits(loaded, processor)
    assert torch.equal(ids_a, ids_b)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_resume_reaches_the_same_losses(dataset, tmp_path):
    common = ["train.max_steps=6", "train.lr=1e-3", "train.save_steps=2", "train.gradient_accumulation_steps=1",
              "train.warmup_ratio=0.2", "train.tasks=[emotion,reason]"]  # 4 samples: the kill is mid-epoch
    straight = loop.train(_cfg(dataset, tmp_path / "a", *common))
    first = loop.train(_cfg(dataset, tmp_path / "b", *common), stop_after_step=3)
    assert first.stopped_early and first.global_step == 3
    assert [p.name for p in loop.list_checkpoints(tmp_path / "b")] == ["checkpoint-2", "checkpoint-3"]
    assert not (tmp_path / "b" / "config.json").exists()  # killed: no final save
    assert json.loads((tmp_path / "b" / "checkpoint-3" / loop.TRAINER_STATE).read_text())["batch_offset"] == 1
    torch.manual_seed(1234)  # LoRA dropout 0.1: the resumed run must use the checkpoint's RNG, not the process's
    resumed = loop.train(_cfg(dataset, tmp_path / "b", *common, "train.resume=latest"))
    assert resumed.global_step == 6
    diffs = [abs(x - y) for x, y in zip(straight.losses, resumed.losses, strict=True)]
    assert max(diffs) < 1e-5, (straight.losses, resumed.losses)
    assert straight.losses[0] != straight.losses[3]  # the check can fail: losses move
    ckpt = tmp_path / "b" / "checkpoint-3"
    weights = sum(f.stat().st_size for f in ckpt.glob("model*.safetensors"))
    assert 0 < weights < 0.5 * sum(p.numel() * 4 for p in straight.model.parameters())  # trainable weights only


def _one_clip_dataset(dataset, root):
    """A copy of the tiny dataset whose training split holds one clip: its emotion answer (a word or two)
    and its reasoning (tens of tokens) are the only samples, of very different target lengths."""
    ds, split = dataset
    shutil.copytree(ds, root)
    records = [json.loads(x) for x in (root / "annotations.jsonl").read_text().splitlines() if x.strip()]
    assert "single_face" in {r["id"] for r in records}
    for r in records:
        if r["id"] != "single_face":
            r["split"] = "elsewhere"
    (root / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root, split


def test_accumulated_step_equals_one_big_batch_step(dataset, tmp_path, monkeypatch):
    """Accumulation 2 of one-sample micro-batches (the emotion answer, the reasoning) gives the gradients,
    weights and loss of one step on both samples at once: the loss is per target token of the whole step,
    so the short answer weighs its few tokens, not half of the step (a mean of micro-batch means would)."""
    grads: list[list[torch.Tensor]] = []

    class RecordingAdamW(torch.optim.AdamW):  # the gradients the optimizer steps with
        def step(self, closure=None):
            grads.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    data = _one_clip_dataset(dataset, tmp_path / "data")
    common = ["train.tasks=[emotion,reason]", "train.max_steps=1", "train.lr=1e-2", "train.warmup_ratio=0.0",
              "train.lr_scheduler=constant", "train.lora.dropout=0.0", "train.max_grad_norm=0", "train.logging_steps=1"]
    big = loop.train(_cfg(data, tmp_path / "big", *common, "train.per_device_batch_size=2"))
    accumulated = loop.train(_cfg(data, tmp_path / "acc", *common, "train.per_device_batch_size=1",
                                  "train.gradient_accumulation_steps=2"))
    assert len(grads) == 2 and len(grads[0]) == len(grads[1]) > 0
    for g_big, g_acc in zip(*grads, strict=True):
        torch.testing.assert_close(g_acc, g_big, rtol=1e-4, atol=1e-7)
    # (the updated weights are not compared: Adam's first update is lr * sign(grad), which float noise flips
    # where a gradient is ~1e-9; the gradients it steps with are what must agree)
    assert accumulated.losses == pytest.approx(big.losses, abs=1e-5)

    # the step's loss is the token-weighted mean of the tasks' losses, both logged
    model, processor = loop.build_model(_cfg(data, tmp_path / "x"))
    ds = loop._dataset(_cfg(data, tmp_path / "x", "train.tasks=[emotion,reason]"), model, processor)
    n = {ds.samples[i]["task"]: sum(x != -100 for x in ds[i]["labels"][1:]) for i in range(len(ds))}
    assert n["reason"] >= 5 * n["emotion"] > 0, n  # the weighting matters
    for run in ("big", "acc"):
        (row,) = _train_rows(tmp_path / run)
        weighted = (row["loss_emotion"] * n["emotion"] + row["loss_reason"] * n["reason"]) / (n["emotion"] + n["reason"])
        assert row["loss"] == pytest.approx(weighted, abs=1e-5), row
        assert abs(row["loss_emotion"] - row["loss_reason"]) > 0.05  # else equal weighting would pass too


def _train_rows(run):
    return [r for r in map(json.loads, (run / "logs" / loop.LOG_FILE).read_text().splitlines()) if r["kind"] == "train"]


def test_resume_with_accumulation_matches_and_logs_each_step_once(dataset, tmp_path):
    """Gradient accumulation 2 (4 samples: 4 micro-batches, 2 optimizer steps per epoch). The run is killed
    at step 3 and resumed from checkpoint-2, so its log already holds step 3: that row must not appear twice."""
    common = ["train.tasks=[emotion,reason]", "train.per_device_batch_size=1", "train.gradient_accumulation_steps=2",
              "train.max_steps=5", "train.lr=1e-3", "train.save_steps=2", "train.warmup_ratio=0.2", "train.logging_steps=1"]
    straight = loop.train(_cfg(dataset, tmp_path / "a", *common))
    run = tmp_path / "b"
    loop.train(_cfg(dataset, run, *common), stop_after_step=3)
    state = json.loads((run / "checkpoint-3" / loop.TRAINER_STATE).read_text())
    assert (state["epoch"], state["batch_offset"]) == (1, 2)  # mid-epoch: 2 of 4 micro-batches consumed
    assert {k: state[k] for k in loop.LAYOUT_KEYS} == {"world_size": 1, "per_device_batch_size": 1,
                                                       "gradient_accumulation_steps": 2}
    assert [r["step"] for r in _train_rows(run)] == [1, 2, 3]
    before = (run / "logs" / loop.LOG_FILE).read_text()

    # another batch layout is refused before any work, naming what changed
    with pytest.raises(ConfigError) as err:
        loop.train(_cfg(dataset, run, *common, "train.gradient_accumulation_steps=1", "train.resume=latest"))
    assert "gradient_accumulation_steps 2 -> 1" in err.value.message and "allow_resume_change" in err.value.hint
    assert (run / "logs" / loop.LOG_FILE).read_text() == before

    torch.manual_seed(1234)  # LoRA dropout 0.1: the resumed run must use the checkpoint's RNG
    resumed = loop.train(_cfg(dataset, run, *common, f"train.resume={run / 'checkpoint-2'}"))
    assert resumed.global_step == 5
    assert max(abs(x - y) for x, y in zip(straight.losses, resumed.losses, strict=True)) < 1e-5, (straight.losses,
                                                                                                 resumed.losses)
    assert straight.losses[0] != straight.losses[3]  # the check can fail: losses move
    rows = _train_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # step 3 once, from the resumed run
    assert [r["loss"] for r in rows] == pytest.approx(straight.losses, abs=1e-5)
    assert not list((run / "logs").glob("*.tmp"))

    # allowed explicitly: continues from checkpoint-3 with another layout (its data order then differs)
    changed = loop.train(_cfg(dataset, tmp_path / "c", *common, "train.per_device_batch_size=2",
                              "train.gradient_accumulation_steps=1", f"train.resume={run / 'checkpoint-3'}",
                              "train.allow_resume_change=true"))
    assert changed.global_step == 5 and len(changed.losses) == 5 and changed.losses[:3] == straight.losses[:3]


def test_prepare_log_truncates_on_resume_and_starts_fresh(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    rows = [{"step": s, "kind": "train", "loss": 1.0} for s in (1, 2, 3, 4)] + [{"step": 4, "kind": "eval"}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "kin'  # the kill cut the last line
    (logs / loop.LOG_FILE).write_text(text)
    for step in (2, 4):
        (logs / loop.EVAL_PREDICTIONS.format(step=step)).write_text("{}\n")
    loop.prepare_log(logs, 2)  # resumed at step 2
    kept = [json.loads(x) for x in (logs / loop.LOG_FILE).read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in kept] == [(1, "train"), (2, "train")]
    assert sorted(p.name for p in logs.iterdir()) == [loop.EVAL_PREDICTIONS.format(step=2), loop.LOG_FILE]
    loop.prepare_log(logs, None)  # a fresh run into the same dir: a new log, nothing of the earlier run
    assert list(logs.iterdir()) == []


def test_save_total_limit_keeps_newest_and_a_fresh_run_starts_clean(dataset, tmp_path):
    cfg = _cfg(dataset, tmp_path / "run", "train.max_steps=5", "train.save_steps=1", "train.save_total_limit=2")
    loop.train(cfg)
    assert [p.name for p in loop.list_checkpoints(tmp_path / "run")] == ["checkpoint-4", "checkpoint-5"]
    # a fresh (not resumed) run into the same dir: nothing of the earlier run's checkpoints or log mixes in
    loop.train(_cfg(dataset, tmp_path / "run", "train.max_steps=2", "train.save_steps=1", "train.save_total_limit=2",
                    "train.logging_steps=1"))
    assert [p.name for p in loop.list_checkpoints(tmp_path / "run")] == ["checkpoint-1", "checkpoint-2"]
    assert [r["step"] for r in _train_rows(tmp_path / "run")] == [1, 2]


@pytest.mark.parametrize("zero3", [False, True])
def test_gradient_checkpointing_gives_lora_grads(dataset, tmp_path, zero3):
    """Non-reentrant by default; reentrant for LoRA under ZeRO-3 (DeepSpeed re-partitions frozen weights
    inside a non-reentrant recompute): either way every LoRA weight gets a gradient."""
    from emollm.training.data import EmotionCollator

    cfg = _cfg(dataset, tmp_path / "run", "train.gradient_checkpointing=true", "train.lora.dropout=0.0")
    model, processor = loop.build_model(cfg, zero3=zero3)
    assert model.language_model.is_gradient_checkpointing
    kinds = {m._gradient_checkpointing_func.keywords["use_reentrant"] for m in model.modules()
             if getattr(m, "gradient_checkpointing", False) and hasattr(m, "_gradient_checkpointing_func")}
    assert kinds == {zero3}
    with torch.no_grad():  # LoRA-B starts at zero, which zeroes LoRA-A's grads: give B a value
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    ds = loop._dataset(cfg, model, processor)
    batch = EmotionCollator(processor, model.config.modalities)([ds[0], ds[1]])
    model(**{k: v for k, v in batch.items() if k != "ids"}).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert sum("lora_A" in n for n in grads) == sum("lora_B" in n for n in grads) > 0
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items()
                                                                             if g is None or not g.abs().sum()]


def test_nan_loss_names_step_and_samples(dataset, tmp_path, monkeypatch):
    from emollm.modeling.modeling_emollm import EmoLLMForConditionalGeneration

    real = EmoLLMForConditionalGeneration.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the loop takes its loss from the logits
            out.logits = out.logits * float("nan")
        return out

    monkeypatch.setattr(EmoLLMForConditionalGeneration, "forward", poisoned)
    with pytest.raises(EmollmError) as err:
        loop.train(_cfg(dataset, tmp_path / "run", "train.max_steps=4"))
    assert "at step 2" in err.value.message and "single_face" in err.value.message and "still" in err.value.message


def test_entry_fails_on_typo_and_missing_dataset_before_work(tmp_path):
    bad = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", "tiny_cpu", "train.save_total_limt=2"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "did you mean 'train.save_total_limit'" in bad.stderr
    assert cli.main(["train", "--config", "tiny_cpu", f"run.output_dir={tmp_path}/r", "data.dataset_dir=null"]) == 2
    assert not (tmp_path / "r").exists()


def test_accelerate_launch_trains_tiny_config(dataset, tmp_path):
    ds, split = dataset
    out = tmp_path / "run"
    eval_split = "fine" if split != "fine" else "coarse"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
           str(ROOT / "train.py"), "--config", str(ROOT / "train_configs" / "tiny_cpu.yaml"), *FAST,
           f"data.dataset_dir={ds}", f"data.train_split={split}", f"data.eval_split={eval_split}",
           "train.tasks=[emotion]", f"run.output_dir={out}", "train.max_steps=2", "train.logging_steps=1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainable parameters: backbone 0, lora" in result.stderr
    assert "trained 2 steps" in result.stdout
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "config.yaml").is_file()


@pytest.mark.parametrize("name,stage,offload", [("zero2", 2, False), ("zero3", 3, False), ("zero3_offload", 3, True)])
def test_deepspeed_configs_load(name, stage, offload):
    from accelerate.utils import DeepSpeedPlugin

    path = ROOT / "train_configs" / "deepspeed" / f"{name}.json"
    data = json.loads(path.read_text())
    zero = data["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero and "offload_param" in zero) == offload
    # ZeRO-3 configs gather 16-bit weights on save (else adapters and projectors save empty); ZeRO-2 has no such key
    assert zero.get("stage3_gather_16bit_weights_on_model_save", False) is (stage == 3)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert data[key] == "auto"  # the run config decides
    assert data["bf16"]["enabled"] == data["fp16"]["enabled"] == "auto"
    plugin = DeepSpeedPlugin(hf_ds_config=str(path))
    assert plugin.zero_stage == stage
    cfg = cfglib.load("tiny_cpu", [f"train.deepspeed={path}"])
    assert cfg.train.deepspeed == str(path)


@pytest.mark.parametrize("name,kind,machines,procs", [("single_gpu", "NO", 1, 1), ("multi_gpu", "MULTI_GPU", 1, 8),
                                                       ("multi_node", "MULTI_GPU", 2, 16)])
def test_accelerate_configs_load(name, kind, machines, procs):
    from accelerate.commands.config.config_args import load_config_from_file

    c = load_config_from_file(str(ROOT / "train_configs" / "accelerate" / f"{name}.yaml"))
    assert c.distributed_type.name == kind and c.num_machines == machines and c.num_processes == procs
    assert c.mixed_precision == "no" and not c.use_cpu  # precision comes from the run config
