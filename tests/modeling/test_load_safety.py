"""Run dirs and exports given by path are vetted before loading: a planted pickle runs nothing and is
named, a damaged weights file is named (emollm.safe_load, docs/security.md)."""

from __future__ import annotations

import shutil

import pytest
import torch

from emollm import config as cfglib
from emollm.errors import CorruptCheckpointError, UnsafeCheckpointError
from emollm.exporting import export_model
from emollm.modeling.factory import build_model_and_processor, load_run, save_run
from emollm.testing.tiny import build_tiny_models


class Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling writes the marker file
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    build_tiny_models()
    model, processor = build_model_and_processor(cfglib.load("tiny_cpu"))
    model.add_lora(r=4, alpha=8)
    return save_run(model, processor, tmp_path_factory.mktemp("saved") / "run")


@pytest.fixture
def run(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "run")


def test_planted_adapter_bin_is_refused_by_load_and_export(run, tmp_path):
    marker = tmp_path / "ran"
    (run / "adapter" / "adapter_model.safetensors").unlink()  # peft would then read the .bin
    torch.save({"base_model.model.lm_head.weight": Planted(marker)}, run / "adapter" / "adapter_model.bin")
    with pytest.raises(UnsafeCheckpointError, match=r"adapter/adapter_model\.bin.*refused pickle global"):
        load_run(run)
    with pytest.raises(UnsafeCheckpointError, match=r"adapter_model\.bin"):
        export_model(run, tmp_path / "export")
    assert not marker.exists() and not (tmp_path / "export").exists()


def test_truncated_media_weights_are_named(run):
    path = run / "media_modules.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptCheckpointError, match=r"media_modules\.safetensors: not a complete safetensors"):
        load_run(run)


def test_leftover_checkpoints_and_logs_are_not_what_loads(run):
    (run / "checkpoint-2").mkdir()
    (run / "checkpoint-2" / "optimizer.bin").write_bytes(b"\0" * 64)  # a killed save: not the run's weights
    model, _ = load_run(run)
    assert model.is_lora
