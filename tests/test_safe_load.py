"""emollm.safe_load.vet: real checkpoint pickles pass, planted code is refused without running, damaged
files are named."""

from __future__ import annotations

import collections
import json
import pickle
import random

import numpy as np
import pytest
import torch

from emollm.errors import CorruptCheckpointError, UnsafeCheckpointError
from emollm.safe_load import file_sizes, vet


class Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling writes the marker file
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _u(text: str) -> bytes:  # SHORT_BINUNICODE
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _state_files(folder):
    """What accelerate / DeepSpeed / transformers write: each must pass."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3)).sum().backward()
    opt.step()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    torch.save(model.state_dict(), folder / "legacy.bin", _use_new_zipfile_serialization=False)
    torch.save(opt.state_dict(), folder / "optimizer.bin")
    flagged = torch.zeros(3)
    flagged.ds_id = 7  # a tensor with attributes, as ZeRO-3's optimizer states hold
    torch.save({"fp32": [flagged], "param": torch.nn.Parameter(torch.ones(2))}, folder / "zero3_optim.pt")
    torch.save({"random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": torch.get_rng_state(), "step": 3}, folder / "random_states_0.pkl")
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    (folder / "pytorch_model").mkdir()
    torch.save({"module": model.state_dict(), "param_shapes": [collections.OrderedDict(w=torch.Size([2, 3]))],
                "sparse_tensor_module_names": set(), "dtype": torch.bfloat16, "ds_version": "0.19"},
               folder / "pytorch_model" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {
        "loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients,
        "dynamic": DynamicLossScaler(init_scale=2**16, scale_window=1000, min_scale=1, delayed_shift=1,
                                     consecutive_hysteresis=False, raise_error_at_min_scale=True, dtype=torch.float16),
        "param_slice_mappings": [collections.OrderedDict(w=fragment_address(numel=6, start=0))],
        "base_optimizer_state": opt.state_dict()}},
        folder / "pytorch_model" / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt")
    for proto in range(2, 6):
        with open(folder / f"plain{proto}.pkl", "wb") as fh:
            pickle.dump({"lr": [1e-3], "arr": np.arange(4), "od": collections.OrderedDict(a=(1, 2))}, fh, protocol=proto)
    (folder / "scheduler.json").write_text(json.dumps({"last_epoch": 3}))


def test_real_checkpoint_files_pass(tmp_path):
    _state_files(tmp_path)
    vet(tmp_path, sizes=file_sizes(tmp_path))


@pytest.mark.parametrize("how", ["torch zip", "torch legacy", *(f"pickle protocol {p}" for p in range(6))])
def test_planted_reduce_is_refused_and_runs_nothing(tmp_path, how):
    marker = tmp_path / "ran"
    path = tmp_path / "optimizer.bin"
    payload = {"state": {0: Planted(marker)}}
    if how == "torch zip":
        torch.save(payload, path)
    elif how == "torch legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how.split()[-1])))
    with pytest.raises(UnsafeCheckpointError, match=r"optimizer\.bin.*refused pickle global '(builtins|__builtin__)\.exec'"):
        vet(tmp_path)
    assert not marker.exists()
    if how != "torch zip":  # the plant is real: unpickled, it runs
        torch.load(path, weights_only=False) if how == "torch legacy" else pickle.loads(path.read_bytes())
        assert marker.exists()


@pytest.mark.parametrize("trick", ["popped decoy", "memoised"])
def test_a_global_hidden_behind_decoy_or_memoised_strings_is_refused(tmp_path, trick):
    marker = tmp_path / "ran"
    call = _u(f"open({str(marker)!r}, 'w').write('ran')") + b"\x85R."  # TUPLE1, REDUCE, STOP
    if trick == "popped decoy":  # the last strings before STACK_GLOBAL are a harmless pair, popped off the stack
        raw = b"\x80\x04" + _u("builtins") + _u("exec") + _u("torch") + _u("Size") + b"00\x93" + call
    else:  # the names come back from the memo (BINGET), pushed and popped long before
        raw = (b"\x80\x04" + _u("builtins") + b"\x94" + _u("exec") + b"\x94" + b"00" + _u("torch") + _u("Size")
               + b"00" + b"h\x00h\x01\x93" + call)
    pickle.loads(raw)
    assert marker.exists()  # it does run when unpickled
    marker.unlink()
    (tmp_path / "custom_checkpoint_0.pkl").write_bytes(raw)
    with pytest.raises(UnsafeCheckpointError, match="custom_checkpoint_0.pkl.*'builtins.exec'"):
        vet(tmp_path)
    assert not marker.exists()


def test_torchscript_archive_is_refused(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "model.pt")
    with pytest.raises(UnsafeCheckpointError, match="model.pt: a TorchScript archive"):
        vet(tmp_path)


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _zero(p):
    p.write_bytes(bytes(p.stat().st_size))


@pytest.mark.parametrize("name", ["optimizer.bin", "legacy.bin", "plain4.pkl", "model.safetensors", "scheduler.json"])
@pytest.mark.parametrize("damage", [_truncate, _zero, lambda p: p.write_bytes(b"")], ids=["truncated", "zeroed", "empty"])
def test_damaged_files_are_named(tmp_path, name, damage):
    from safetensors.torch import save_file

    _state_files(tmp_path)
    save_file({"w": torch.ones(4, 4)}, tmp_path / "model.safetensors")
    damage(tmp_path / name)
    with pytest.raises(CorruptCheckpointError, match=name.replace(".", r"\.")):
        vet(tmp_path)


def test_recorded_sizes_catch_missing_and_resized_files(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.txt").write_text("x" * 10)
    sizes = file_sizes(tmp_path)
    (tmp_path / "b.txt").write_text("x" * 5)
    with pytest.raises(CorruptCheckpointError, match=r"b\.txt: 5 bytes, 10 when it was saved"):
        vet(tmp_path, sizes=sizes)
    (tmp_path / "b.txt").unlink()
    with pytest.raises(CorruptCheckpointError, match=r"b\.txt: missing"):
        vet(tmp_path, sizes=sizes)


def test_pickle_zip_polyglot_is_scanned_as_torch_reads_it(tmp_path):
    import io

    marker = tmp_path / "ran"
    good = io.BytesIO()
    torch.save({"w": torch.ones(2)}, good)
    # a planted pickle in front of a valid torch archive: zipfile finds the archive at the end, torch.load
    # (no zip magic at byte 0) unpickles the front as a legacy file
    (tmp_path / "optimizer.bin").write_bytes(pickle.dumps(Planted(marker), protocol=2) + good.getvalue())
    with pytest.raises(UnsafeCheckpointError, match="optimizer.bin.*exec"):
        vet(tmp_path)
    assert not marker.exists()


def test_legacy_tar_archive_is_refused(tmp_path):
    import tarfile

    (tmp_path / "pickle").write_bytes(pickle.dumps({"a": 1}))
    with tarfile.open(tmp_path / "model.pt", "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tmp_path / "pickle", arcname="pickle")
    with pytest.raises(UnsafeCheckpointError, match="model.pt: a legacy torch tar archive"):
        vet(tmp_path / "model.pt")
