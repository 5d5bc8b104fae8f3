"""Input paths are checked before anything heavy loads, and a missing local folder is named as such."""

from __future__ import annotations

import pytest

from emollm import config as cfglib
from emollm.config.paths import check_input_paths, looks_local
from emollm.errors import ConfigError, FeatureCacheError


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "ds"
    (root / "features").mkdir(parents=True)
    (root / "annotations.jsonl").write_text("", encoding="utf-8")
    return root


def _cfg(*overrides: str):
    return cfglib.load("tiny_cpu", list(overrides))


@pytest.mark.parametrize("name", ["/data/llama", "./models/x", "../x", "~/no/such/model", "a/b/c", "C:\\models\\x"])
def test_local_looking_names(name):
    assert looks_local(name)


@pytest.mark.parametrize("name", ["meta-llama/Llama-2-7b-chat-hf", "gpt2", "openai/whisper-base"])
def test_hub_ids_are_not_local(name):
    assert not looks_local(name)


@pytest.mark.parametrize("backbone", ["/data/llama", "./models/x"])
def test_a_missing_local_backbone_is_no_such_folder_not_a_bad_hub_id(dataset, backbone):
    with pytest.raises(ConfigError) as err:
        check_input_paths(_cfg(f"data.dataset_dir={dataset}", f"model.backbone.name_or_path={backbone}"), "train")
    assert err.value.message == f"model.backbone.name_or_path: no such folder: {backbone} (the backbone LLM)"
    assert "hub id" not in err.value.message


def test_a_hub_id_backbone_is_left_to_the_loader(dataset, tmp_path):
    encoders = tmp_path / "enc"  # tiny_cpu's encoders need not be built for this check: point them at a folder
    encoders.mkdir()
    over = [f"model.encoders.{n}.name_or_path={encoders}" for n in ("video", "face", "temporal", "audio")]
    check_input_paths(_cfg(f"data.dataset_dir={dataset}", "model.backbone.name_or_path=meta-llama/Llama-2-7b-hf",
                           *over), "train")


def test_dataset_problems_are_named(tmp_path, dataset):
    with pytest.raises(ConfigError, match=r"^data.dataset_dir is not set"):
        check_input_paths(_cfg("data.dataset_dir=null"), "train")
    with pytest.raises(ConfigError, match=f"^data.dataset_dir: no such folder: {tmp_path}/nope"):
        check_input_paths(_cfg(f"data.dataset_dir={tmp_path}/nope"), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no annotations.jsonl"):
        check_input_paths(_cfg(), "features", dataset_dir=tmp_path / "empty")
    (dataset / "features").rmdir()
    with pytest.raises(FeatureCacheError, match="no such folder: .*ds/features"):
        check_input_paths(_cfg(f"data.dataset_dir={dataset}"), "train")


def test_missing_encoder_and_run_folders(dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"^model.encoders.audio.name_or_path: no such folder: /no/hubert"):
        check_input_paths(_cfg("model.encoders.audio.name_or_path=/no/hubert"), "features", dataset_dir=dataset)
    with pytest.raises(ConfigError, match=r"^--model: no such folder: .*/run"):
        check_input_paths(None, "infer", extra={"--model": tmp_path / "run"})
    with pytest.raises(ConfigError, match=r"^train.init_from: no such folder"):
        check_input_paths(_cfg(f"data.dataset_dir={dataset}", "train.stage=2", f"train.init_from={tmp_path}/s1"),
                          "train")


def test_a_run_needs_its_backbone_folder_only_when_it_loads_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = _cfg("model.backbone.name_or_path=/gone/llama", "model.encoders={}")
    check_input_paths(cfg, "infer", run_dir=run)  # fully fine-tuned: its own weights, the old path unused
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"^model.backbone.name_or_path: no such folder: /gone/llama"):
        check_input_paths(cfg, "infer", run_dir=run)
