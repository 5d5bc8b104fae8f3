"""The training loop: LoRA training on the tiny built dataset, checkpoints, exact resume, run dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.errors import EmollmError
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
    # the run dir gives the same logits as the in-memory model
    loaded, processor = load_run(run)
    ds = loop._dataset(cfg, loaded, processor)
    from emollm.training.data import EmotionCollator

    batch = EmotionCollator(processor, loaded.config.modalities)([ds[0], ds[1]])
    inputs = {k: v for k, v in batch.items() if k not in ("ids", "labels")}
    model.eval()
    with torch.no_grad():
        a, b = model(**inputs).logits, loaded(**inputs).logits
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


def test_save_total_limit_keeps_newest(dataset, tmp_path):
    cfg = _cfg(dataset, tmp_path / "run", "train.max_steps=5", "train.save_steps=1", "train.save_total_limit=2")
    loop.train(cfg)
    assert [p.name for p in loop.list_checkpoints(tmp_path / "run")] == ["checkpoint-4", "checkpoint-5"]


def test_gradient_checkpointing_gives_lora_grads(dataset, tmp_path):
    from emollm.training.data import EmotionCollator

    cfg = _cfg(dataset, tmp_path / "run", "train.gradient_checkpointing=true", "train.lora.dropout=0.0")
    model, processor = loop.build_model(cfg)
    assert model.language_model.is_gradient_checkpointing
    with torch.no_grad():  # LoRA-B starts at zero, which zeroes LoRA-A's grads: give B a value
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    ds = loop._dataset(cfg, model, processor)
    batch = EmotionCollator(processor, model.config.modalities)([ds[0], ds[1]])
    model(**{k: v for k, v in batch.items() if k != "ids"}).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n}
    assert grads and all(g is not None for g in grads.values())
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_nan_loss_names_step_and_samples(dataset, tmp_path, monkeypatch):
    from emollm.modeling.modeling_emollm import EmoLLMForConditionalGeneration

    real = EmoLLMForConditionalGeneration.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss = out.loss * float("nan")
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
    if stage == 3:  # else adapters and projectors save empty under ZeRO-3
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
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
