"""Fixtures the GRPO tests share (one process and distributed): a tiny dataset and a short SFT run on it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def grpo_dataset(sample_dir, tmp_path_factory):
    from emollm.testing.datasets import build_tiny_training_dataset

    return build_tiny_training_dataset(sample_dir, tmp_path_factory.mktemp("grpo_data"))


@pytest.fixture(scope="session")
def grpo_sft_run(grpo_dataset, tmp_path_factory):
    """A short SFT run (LoRA + media projectors, the default LoRA dropout) to start GRPO from."""
    from emollm import config as cfglib
    from emollm.testing.datasets import FAST
    from emollm.training import loop

    ds, split = grpo_dataset
    out = tmp_path_factory.mktemp("grpo_sft") / "run"
    loop.train(cfglib.load("tiny_cpu", [*FAST, f"data.dataset_dir={ds}", f"data.train_split={split}",
                                        "train.tasks=[emotion]", f"run.output_dir={out}", "train.max_steps=3",
                                        "train.lr=1e-2"]))
    return out
