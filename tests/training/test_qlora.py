"""QLoRA: the backbone loaded 4-bit (nf4) / 8-bit by bitsandbytes, LoRA + float32 media modules trained
through the real `train()`, saved, loaded quantised again with the same logits; --merge refused."""

from __future__ import annotations

import json

import pytest
import torch

import emollm
from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.errors import ConfigError
from emollm.modeling import quantization
from emollm.testing.datasets import FAST, build_tiny_training_dataset
from emollm.training import loop

KINDS = ("4bit", "8bit")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def bnb_ok():
    reason = quantization.backend_error("cuda" if torch.cuda.is_available() else "cpu")
    if reason:
        pytest.skip(f"this bitsandbytes cannot run quantised layers here: {reason}")


@pytest.fixture(scope="module")
def dataset(sample_dir, tmp_path_factory):
    return build_tiny_training_dataset(sample_dir, tmp_path_factory.mktemp("qlora_data"))


def _cfg(dataset, out_dir, *overrides):
    ds, split = dataset
    return cfglib.load("tiny_cpu", [*FAST, f"data.dataset_dir={ds}", f"data.train_split={split}",
                                     "data.eval_split=coarse", "train.tasks=[emotion]", f"run.output_dir={out_dir}",
                                     "train.lr=1e-2", "train.warmup_ratio=0", "train.lr_scheduler=constant",
                                     "train.save_steps=100", "train.lora.dropout=0.0", *overrides])


@pytest.fixture(scope="module")
def runs(bnb_ok, dataset, tmp_path_factory):
    """One 3-step QLoRA run per kind, with the weights the model started from."""
    root = tmp_path_factory.mktemp("qlora_runs")
    out = {}
    for kind in KINDS:
        start: dict[str, torch.Tensor] = {}
        real = loop.build_model

        def spy(cfg, _real=real, _start=start):
            model, processor = _real(cfg)
            _start.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
            return model, processor

        loop.build_model = spy
        try:
            torch.manual_seed(0)
            result = loop.train(_cfg(dataset, root / kind, "train.max_steps=3", f"train.quantization={kind}"))
        finally:
            loop.build_model = real
        out[kind] = {"result": result, "start": start, "run": root / kind}
    return out


def _logits(model, processor, dataset, cfg):
    from emollm.training.data import EmotionCollator

    ds = loop._dataset(cfg, model, processor)
    batch = EmotionCollator(processor, model.config.modalities)([ds[0], ds[1]])
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k not in ("ids", "labels")}).logits


def _bnb_class(kind):
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit if kind == "4bit" else bnb.nn.Linear8bitLt


@pytest.mark.parametrize("kind", KINDS)
def test_qlora_trains_lora_and_float32_media_on_a_quantised_backbone(runs, kind):
    result, start = runs[kind]["result"], runs[kind]["start"]
    model = result.model
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.losses[-1] < result.losses[0], result.losses  # lr 1e-2 from step 1: it learns
    # every attention / MLP projection of the backbone is a bitsandbytes layer (under its LoRA wrapper)
    layers = model.language_model.base_model.model.model.layers
    bases = [getattr(layer_part, name).base_layer for layer in layers
             for layer_part in (layer.self_attn, layer.mlp) for name in PROJECTIONS if hasattr(layer_part, name)]
    assert len(bases) == 7 * len(layers) and all(isinstance(b, _bnb_class(kind)) for b in bases)
    assert not isinstance(model.language_model.get_output_embeddings(), _bnb_class(kind))  # the LM head stays float
    assert model.config.quantization == ({"bits": 8} if kind == "8bit" else
                                         {"bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "float32"})
    # media modules: float32, trained in full; the backbone's own weights: frozen
    media = dict(model.media.named_parameters())
    assert media and all(p.dtype == torch.float32 and p.requires_grad for p in media.values())
    assert model.trainable_parameters_by_group()["backbone"] == 0
    now = dict(model.named_parameters())
    lora_b = [n for n in start if "lora_B" in n]
    assert lora_b and all(now[n].abs().sum() > 0 for n in lora_b)  # LoRA-B starts at zero
    projectors = [n for n in start if n.startswith("media.") and "projector" in n]
    assert projectors and all(not torch.equal(now[n], start[n]) for n in projectors)


@pytest.mark.parametrize("kind", KINDS)
def test_a_qlora_run_loads_quantised_again_with_the_same_logits(runs, dataset, kind):
    run, trained = runs[kind]["run"], runs[kind]["result"].model
    saved = json.loads((run / "config.json").read_text())["quantization"]
    assert saved == trained.config.quantization
    assert not list((run / "adapter").glob("*base*")) and (run / "media_modules.safetensors").is_file()
    explainer = emollm.load(run, device="cpu")  # the Explainer.load path: run config + load_run
    loaded = explainer.model
    assert loaded.is_quantized and loaded.config.quantization == saved
    layer = loaded.language_model.base_model.model.model.layers[0].mlp.down_proj.base_layer
    assert isinstance(layer, _bnb_class(kind))
    assert all(p.dtype == torch.float32 for p in loaded.media.parameters())
    cfg = _cfg(dataset, run)
    before = _logits(trained, runs[kind]["result"].processor, dataset, cfg)
    after = _logits(loaded, explainer.processor, dataset, cfg)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


def test_merge_of_a_qlora_run_is_refused_and_the_unmerged_export_loads(runs, dataset, tmp_path, capsys):
    from emollm.exporting import export_model
    from emollm.modeling.factory import load_run

    run = runs["4bit"]["run"]
    assert cli.main(["--quiet", "export", "--model", str(run), "--out", str(tmp_path / "merged"), "--merge"]) == 2
    err = capsys.readouterr().err
    assert "error: cannot --merge run" in err and "QLoRA run (backbone 4-bit nf4" in err
    assert "export without --merge" in err and not (tmp_path / "merged").exists()

    export_model(run, tmp_path / "plain")
    assert "| quantization | QLoRA, backbone 4-bit nf4 (float32 compute, double quant) (bitsandbytes) |" in (
        tmp_path / "plain" / "README.md").read_text()
    model, processor = load_run(tmp_path / "plain")
    assert model.is_quantized and isinstance(
        model.language_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer, _bnb_class("4bit"))
    cfg = _cfg(dataset, run)
    torch.testing.assert_close(_logits(model, processor, dataset, cfg),
                               _logits(runs["4bit"]["result"].model, runs["4bit"]["result"].processor, dataset, cfg),
                               atol=1e-5, rtol=0)


def test_stage_two_continues_a_qlora_run_and_must_keep_its_quantization(runs, dataset, tmp_path):
    run = runs["4bit"]["run"]
    with pytest.raises(ConfigError, match=r"train.quantization=none, but the train.init_from run .* 4-bit nf4"):
        loop.build_model(_cfg(dataset, tmp_path / "none", f"train.init_from={run}", "train.stage=2"))
    result = loop.train(_cfg(dataset, tmp_path / "stage2", f"train.init_from={run}", "train.stage=2",
                             "train.quantization=4bit", "train.max_steps=2"))
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    model = result.model
    assert model.is_quantized and model.trainable_parameters_by_group()["backbone"] == 0
    stage1 = dict(runs["4bit"]["result"].model.named_parameters())
    changed = [n for n, p in model.named_parameters() if "lora_A" in n and not torch.equal(p, stage1[n])]
    assert changed  # the stage-1 adapter kept training


@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_qlora_run_resumes_to_the_same_losses(bnb_ok, dataset, tmp_path, kind):
    """Checkpoints of a quantised model hold its trainable weights only and load back; the bitsandbytes
    probe draws no random number from the run's seeded stream (else LoRA's init would differ per call)."""
    common = ["train.max_steps=4", "train.save_steps=2", f"train.quantization={kind}", "train.lora.dropout=0.1",
              "train.tasks=[emotion,reason]"]
    straight = loop.train(_cfg(dataset, tmp_path / "a", *common))
    killed = loop.train(_cfg(dataset, tmp_path / "b", *common), stop_after_step=3)
    assert killed.stopped_early and killed.losses == straight.losses[:3]
    torch.manual_seed(1234)
    resumed = loop.train(_cfg(dataset, tmp_path / "b", *common, "train.resume=latest"))
    assert resumed.global_step == 4 and straight.losses[0] != straight.losses[3]
    assert max(abs(x - y) for x, y in zip(straight.losses, resumed.losses, strict=True)) < 1e-5, \
        (straight.losses, resumed.losses)


def test_gradient_checkpointing_gives_lora_grads_on_a_4bit_backbone(bnb_ok, dataset, tmp_path):
    from emollm.training.data import EmotionCollator

    cfg = _cfg(dataset, tmp_path / "run", "train.quantization=4bit", "train.gradient_checkpointing=true")
    model, processor = loop.build_model(cfg)
    assert model.language_model.is_gradient_checkpointing
    with torch.no_grad():  # LoRA-B starts at zero, which zeroes LoRA-A's grads: give B a value
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    ds = loop._dataset(cfg, model, processor)
    batch = EmotionCollator(processor, model.config.modalities)([ds[0], ds[1]])
    model(**{k: v for k, v in batch.items() if k != "ids"}).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_" in n or n.startswith("media.")}
    assert grads and all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_" in n)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("media."))


def test_4bit_settings_are_checked_and_recorded():
    with pytest.raises(ConfigError, match="train.bnb_4bit_quant_type.*applies to train.quantization=4bit only"):
        cfglib.load("tiny_cpu", ["train.quantization=8bit", "train.bnb_4bit_quant_type=fp4"])
    with pytest.raises(ConfigError, match="train.bnb_4bit_compute_dtype"):
        cfglib.load("tiny_cpu", ["train.quantization=4bit", "train.bnb_4bit_compute_dtype=int8"])
    with pytest.raises(ConfigError, match="train.quantization"):
        cfglib.load("tiny_cpu", ["train.quantization=4bit", "train.lora.enabled=false"])
    settings = quantization.settings_from_config(cfglib.load("tiny_cpu", ["train.quantization=4bit", "train.bf16=true",
                                                                          "train.bnb_4bit_quant_type=fp4"]))
    assert settings == {"bits": 4, "quant_type": "fp4", "double_quant": True, "compute_dtype": "bfloat16"}
    config = quantization.bnb_config(settings)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    # auto follows the backbone's dtype without mixed precision (tiny_cpu: float32)
    assert quantization.settings_from_config(cfglib.load("tiny_cpu", ["train.quantization=4bit"]))["compute_dtype"] == "float32"
    assert quantization.settings_from_config(cfglib.load("tiny_cpu")) is None


def test_a_bitsandbytes_that_cannot_run_here_is_one_clear_error_before_any_load(dataset, tmp_path, monkeypatch, capsys):
    from emollm.modeling import factory

    monkeypatch.setattr(quantization, "backend_error", lambda device="cpu": "bitsandbytes 0.42.0 has no CPU backend")
    monkeypatch.setattr(factory, "build_model_and_processor", lambda cfg: pytest.fail("loaded a model first"))
    ds, split = dataset
    code = cli.main(["--quiet", "train", "--config", "tiny_cpu", *FAST, f"data.dataset_dir={ds}",
                     f"data.train_split={split}", f"run.output_dir={tmp_path / 'run'}", "train.quantization=4bit"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[0] == "error: train.quantization=4bit: bitsandbytes 0.42.0 has no CPU backend"
    assert "pip install -U 'bitsandbytes>=0.45'" in err[1]
