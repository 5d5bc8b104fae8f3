"""Resume that tells the truth and runs nothing from a checkpoint: corrupt checkpoints are named and
skipped (``latest``) or refused (an explicit dir), planted pickles are refused before any library
unpickles them, a missing RNG file is a warning, a changed config is an error naming its keys."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.errors import ConfigError, CorruptCheckpointError, EmollmError, UnsafeCheckpointError
from emollm.testing.datasets import FAST, build_tiny_training_dataset
from emollm.training import loop

COMMON = ["train.max_steps=4", "train.lr=1e-3", "train.save_steps=2", "train.gradient_accumulation_steps=1",
          "train.warmup_ratio=0.5", "train.tasks=[emotion,reason]", "train.lora.dropout=0.1"]


@pytest.fixture(scope="module")
def dataset(sample_dir, tmp_path_factory):
    return build_tiny_training_dataset(sample_dir, tmp_path_factory.mktemp("resume_data"))


def _cfg(dataset, out_dir, *overrides):
    ds, split = dataset
    return cfglib.load("tiny_cpu", [*FAST, f"data.dataset_dir={ds}", f"data.train_split={split}",
                                     f"run.output_dir={out_dir}", *COMMON, *overrides])


@pytest.fixture(scope="module")
def killed(dataset, tmp_path_factory):
    """A run killed after step 3: checkpoint-2 and checkpoint-3 (shared; tests work on copies)."""
    out = tmp_path_factory.mktemp("killed") / "run"
    first = loop.train(_cfg(dataset, out), stop_after_step=3)
    assert [p.name for p in loop.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]
    return out, first.losses


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory):
    """The uninterrupted run's per-step losses."""
    return loop.train(_cfg(dataset, tmp_path_factory.mktemp("straight") / "run")).losses


@pytest.fixture
def logs(caplog):
    """caplog, fed by emollm's logger (the CLI's logging setup stops its propagation)."""
    logger = logging.getLogger("emollm")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="emollm")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def run_copy(killed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(killed[0], out)
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


CORRUPTIONS = {
    "truncated safetensors": ("model.safetensors", _truncate),
    "zeroed safetensors": ("model.safetensors", _zero),
    "bad trainer state json": (loop.TRAINER_STATE, lambda p: p.write_text('{"global_step": 3, "epo')),
    "bad scheduler json": (loop.SCHEDULER_STATE, lambda p: p.write_text("{")),
    "truncated optimizer pickle": ("optimizer.bin", _truncate),
    "zeroed rng pickle": ("random_states_0.pkl", _zero),
}


def test_checkpoint_holds_no_pickled_scheduler_and_records_its_files(killed):
    ckpt = killed[0] / "checkpoint-3"
    assert not list(ckpt.glob("custom_checkpoint_*.pkl"))  # accelerate would unpickle it with weights_only=False
    assert json.loads((ckpt / loop.SCHEDULER_STATE).read_text())["last_epoch"] == 3
    state = json.loads((ckpt / loop.TRAINER_STATE).read_text())
    assert state["files"]["model.safetensors"] == (ckpt / "model.safetensors").stat().st_size
    assert state["config"]["train.lora.r"] == 8 and state["config"]["train.lr"] == 1e-3
    assert "model.encoders.video.projector" in state["config"]  # the model's shape, per modality
    assert not any(k.endswith("name_or_path") for k in state["config"])  # paths move with the run


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_latest_skips_a_corrupt_newest_checkpoint_naming_the_file(run_copy, kind, logs):
    name, damage = CORRUPTIONS[kind]
    damage(run_copy / "checkpoint-3" / name)
    path, state = loop.resume_checkpoint("latest", run_copy)
    assert path.name == "checkpoint-2" and state["global_step"] == 2
    warned = " ".join(r.getMessage() for r in logs.records)
    assert f"checkpoint-3/{name}" in warned and "checkpoint-2" in warned, warned
    # an explicit path to the corrupt checkpoint is the user's choice: an error naming the file, no fallback
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint-3/{name}") as err:
        loop.resume_checkpoint(str(run_copy / "checkpoint-3"), run_copy)
    assert "checkpoint-2" in err.value.hint


def test_a_truncated_file_of_the_same_checkpoint_is_caught_by_its_recorded_size(run_copy):
    path = run_copy / "checkpoint-3" / "model.safetensors"
    with open(path, "ab") as fh:  # grown: the safetensors header still parses, the recorded size does not match
        fh.write(b"\0" * 16)
    with pytest.raises(CorruptCheckpointError, match="model.safetensors: .* bytes, .* when it was saved"):
        loop.vet_checkpoint(run_copy / "checkpoint-3")


def test_resume_falls_back_and_reaches_the_uninterrupted_losses(dataset, killed, straight, run_copy, logs):
    _truncate(run_copy / "checkpoint-3" / "model.safetensors")
    torch.manual_seed(99)  # the checkpoint's RNG is restored, not this
    resumed = loop.train(_cfg(dataset, run_copy, "train.resume=latest"))
    assert "checkpoint-3/model.safetensors" in logs.text
    assert resumed.global_step == 4
    assert resumed.losses == pytest.approx(straight, abs=1e-5)  # scheduler (warmup) and RNG restored
    assert straight[:3] == pytest.approx(killed[1], abs=1e-6)
    assert straight[1] != straight[2]  # the check can fail: losses move


def test_a_skipped_checkpoint_is_replaced_whole_when_its_step_is_saved_again(dataset, run_copy):
    ckpt = run_copy / "checkpoint-3"
    _zero(ckpt / "optimizer.bin")
    (ckpt / "pytorch_model.bin").write_bytes(b"stale")  # would shadow nothing, but must not linger
    again = loop.train(_cfg(dataset, run_copy, "train.resume=latest"), stop_after_step=3)  # from checkpoint-2
    assert again.global_step == 3
    assert not (ckpt / "pytorch_model.bin").exists()
    assert loop.resume_checkpoint("latest", run_copy)[0] == ckpt  # whole again


@pytest.mark.parametrize("scheduler", ["pickled by an older emollm", "not saved"])
def test_older_checkpoint_without_scheduler_json_resumes_exactly(dataset, straight, run_copy, scheduler, logs):
    ckpt = run_copy / "checkpoint-3"
    state = json.loads((ckpt / loop.TRAINER_STATE).read_text())
    for key in ("files", "config"):  # records an older emollm did not write
        del state[key]
    (ckpt / loop.TRAINER_STATE).write_text(json.dumps(state))
    if scheduler.startswith("pickled"):  # what register_for_checkpointing(scheduler) wrote
        torch.save(json.loads((ckpt / loop.SCHEDULER_STATE).read_text()), ckpt / "custom_checkpoint_0.pkl")
    (ckpt / loop.SCHEDULER_STATE).unlink()
    resumed = loop.train(_cfg(dataset, run_copy, "train.resume=latest"))
    assert resumed.losses == pytest.approx(straight, abs=1e-5)
    assert ("LR schedule is replayed" in logs.text) == (scheduler == "not saved")


def test_no_complete_checkpoint_stops_with_a_clear_error(dataset, run_copy, capsys):
    for ckpt in loop.list_checkpoints(run_copy):
        _zero(ckpt / "optimizer.bin")
    with pytest.raises(EmollmError, match="no complete checkpoint.*checkpoint-3/optimizer.bin"):
        loop.resume_checkpoint("latest", run_copy)
    ds, split = dataset
    rc = cli.main(["train", "--config", "tiny_cpu", *FAST, f"data.dataset_dir={ds}", f"data.train_split={split}",
                   f"run.output_dir={run_copy}", "train.resume=latest"])
    err = capsys.readouterr().err
    assert rc != 0 and "checkpoint-3/optimizer.bin" in err and "bug" not in err, err


def test_missing_rng_state_is_a_warning(dataset, run_copy, logs):
    (run_copy / "checkpoint-3" / "random_states_0.pkl").unlink()
    assert loop.vet_checkpoint(run_copy / "checkpoint-3")["global_step"] == 3  # not corrupt
    resumed = loop.train(_cfg(dataset, run_copy, "train.resume=latest"))
    assert resumed.global_step == 4
    assert "random_states_0.pkl is missing" in logs.text


class _Planted:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling writes the marker file
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


PLANTS = {  # file kind -> where a shared checkpoint could carry it
    "custom/scheduler state": "custom_checkpoint_0.pkl",
    "optimizer": "optimizer.bin",
    "rng state": "random_states_0.pkl",
    "model weights .bin": "pytorch_model.bin",
    "deepspeed .pt": "pytorch_model/mp_rank_00_model_states.pt",
}


@pytest.mark.parametrize("kind", list(PLANTS))
def test_planted_pickle_is_refused_and_runs_nothing(dataset, run_copy, tmp_path, kind):
    marker = tmp_path / "pwned"
    target = run_copy / "checkpoint-3" / PLANTS[kind]
    target.parent.mkdir(exist_ok=True)
    torch.save({"state": [_Planted(marker)]}, target)
    for resume in ("latest", str(run_copy / "checkpoint-3")):
        with pytest.raises(UnsafeCheckpointError, match=f"{PLANTS[kind]}.*refused pickle global '(__builtin__|builtins).exec'"):
            loop.train(_cfg(dataset, run_copy, f"train.resume={resume}"))
    assert not marker.exists()
    with open(target, "wb") as fh:  # a plain pickle (not torch's zip format) too
        pickle.dump(_Planted(marker), fh, protocol=4)
    with pytest.raises(UnsafeCheckpointError, match=PLANTS[kind]):
        loop.resume_checkpoint("latest", run_copy)
    assert not marker.exists()
    pickle.loads(target.read_bytes())  # the plant works: the marker appears once it is unpickled
    assert marker.exists()
    os.remove(marker)


@pytest.mark.parametrize(("change", "named"), [
    (["train.per_device_batch_size=1"], "per_device_batch_size 2 -> 1"),
    (["train.lora.r=4"], "train.lora.r 8 -> 4"),
    (["train.lr=5e-3"], "train.lr 0.001 -> 0.005"),
])
def test_resume_with_a_changed_result_setting_stops_naming_the_key(dataset, run_copy, change, named):
    with pytest.raises(ConfigError, match=named):
        loop.train(_cfg(dataset, run_copy, "train.resume=latest", *change))


def test_allowed_lora_shape_change_is_a_clear_error_not_a_crash(dataset, run_copy):
    with pytest.raises(EmollmError, match="cannot load checkpoint .*checkpoint-3 into this model"):
        loop.train(_cfg(dataset, run_copy, "train.resume=latest", "train.lora.r=4", "train.allow_resume_change=true"))
