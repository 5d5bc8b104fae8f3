"""Baseline resume vets its checkpoint as the LLM loop does: a planted optimizer pickle runs nothing, a
corrupt newest checkpoint is skipped by ``latest`` with its file named."""

from __future__ import annotations

import pytest
import torch

from emollm import config as cfglib
from emollm.baselines.train import train_baseline
from emollm.errors import UnsafeCheckpointError

OVERRIDES = ["baseline.method=hlm12erc", "baseline.epochs=3", "baseline.save_total_limit=null"]


class Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling writes the marker file
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture
def killed(synthetic_dataset, tmp_path):
    ds = synthetic_dataset
    out = tmp_path / "run"
    train_baseline(cfglib.load(ds.config, [*OVERRIDES, f"run.output_dir={out}"]), ds.root, stop_after_epoch=2)
    return ds, out


def _resume(ds, out):
    return train_baseline(cfglib.load(ds.config, [*OVERRIDES, f"run.output_dir={out}", "baseline.resume=latest"]),
                          ds.root)


def test_planted_optimizer_pickle_is_refused(killed, tmp_path):
    ds, out = killed
    marker = tmp_path / "ran"
    torch.save({"state": {0: Planted(marker)}, "param_groups": []}, out / "checkpoint-2" / "optimizer.pt")
    with pytest.raises(UnsafeCheckpointError, match="checkpoint-2/.*refused pickle global"):
        _resume(ds, out)
    assert not marker.exists()


def test_corrupt_newest_checkpoint_is_skipped(killed):
    ds, out = killed
    weights = out / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    result = _resume(ds, out)  # from checkpoint-1: the run still ends whole
    assert result.epochs == 3 and not result.stopped_early and len(result.losses) == 2
