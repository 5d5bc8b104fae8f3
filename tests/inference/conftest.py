"""A small trained run over the tiny built dataset (a clip and a still), shared by the inference tests."""

from __future__ import annotations

import json

import pytest
import torch

from emollm import config as cfglib
from emollm.testing.datasets import FAST, build_tiny_training_dataset


@pytest.fixture(scope="session")
def tiny_dataset(sample_dir, tmp_path_factory):
    return build_tiny_training_dataset(sample_dir, tmp_path_factory.mktemp("infer_data"))


@pytest.fixture(scope="session")
def trained_run(tiny_dataset, tmp_path_factory):
    """LoRA + media trained until the tiny backbone answers the clip's pseudo-label (overfit on purpose:
    then a right or wrong pipeline shows in the predictions)."""
    from emollm.training.loop import train

    dataset, split = tiny_dataset
    out = tmp_path_factory.mktemp("infer_run") / "run"
    cfg = cfglib.load("tiny_cpu", [*FAST, f"data.dataset_dir={dataset}", "data.train_split=fine",
                                   "data.eval_split=coarse", "train.tasks=[emotion]", f"run.output_dir={out}",
                                   "train.max_steps=15", "train.lr=1e-2", "train.lr_scheduler=constant",
                                   "train.warmup_ratio=0", "train.save_steps=1000", "train.logging_steps=10",
                                   "train.lora.dropout=0.0", "predict.max_new_tokens=6", "predict.batch_size=2"])
    torch.manual_seed(0)
    train(cfg)
    labels = {r["id"]: r.get("pseudo_label") for r in map(json.loads, (dataset / "annotations.jsonl").read_text().splitlines())}
    return out, labels


@pytest.fixture
def expand_sizes(monkeypatch):
    """The beam / return-sequence factor of every generate call (EmoLLM expands the media by it)."""
    from emollm.modeling import EmoLLMForConditionalGeneration

    sizes = []
    original = EmoLLMForConditionalGeneration._expand_inputs_for_generation

    def spy(self, expand_size=1, **kwargs):
        sizes.append(expand_size)
        return original(self, expand_size=expand_size, **kwargs)

    monkeypatch.setattr(EmoLLMForConditionalGeneration, "_expand_inputs_for_generation", spy)
    return sizes
