"""Config system: YAML + extends + ${ENV} + dotted overrides -> validated dataclasses."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from emollm import config as cfglib
from emollm.errors import ConfigError
from emollm.resources import train_configs_dir


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_defaults_without_a_file():
    cfg = cfglib.load()
    assert cfg.train.lr == 2e-4
    assert cfg.media.num_frames == 16 and cfg.media.fps is None
    assert cfg.model.backbone.trust_remote_code is False


def test_shipped_config_by_name_and_dotted_overrides():
    cfg = cfglib.load("tiny_cpu", ["train.lr=2e-5", "model.backbone.name_or_path=/ckpt", "train.tasks=[emotion]"])
    assert cfg.train.lr == pytest.approx(2e-5)  # "2e-5" is a YAML string: coerced to float
    assert isinstance(cfg.train.lr, float)
    assert cfg.model.backbone.name_or_path == "/ckpt"
    assert cfg.train.tasks == ["emotion"]
    assert cfg.run.name == "tiny_cpu"  # from tiny_cpu.yaml
    assert cfg.evaluate.fallback_label == "neutral"  # from base.yaml via extends


def test_every_shipped_config_validates():
    files = sorted(train_configs_dir().glob("*.yaml"))
    assert files, "train_configs/ ships no YAML"
    for path in files:
        cfglib.load(path)


def test_extends_chain_merges_mappings_and_replaces_lists(tmp_path):
    write(tmp_path / "a.yaml", """
        train: {lr: 0.1, tasks: [emotion, reason], lora: {r: 4, alpha: 8}}
        run: {seed: 1}
    """)
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "b.yaml", """
        extends: ../a.yaml
        train: {lr: 0.2, lora: {r: 16}}
    """)
    child = write(tmp_path / "c.yaml", """
        extends: [sub/b.yaml]
        train: {tasks: [reason]}
    """)
    cfg = cfglib.load(child)
    assert cfg.train.lr == 0.2
    assert cfg.train.lora.r == 16 and cfg.train.lora.alpha == 8  # merged key by key
    assert cfg.train.tasks == ["reason"]  # lists are replaced, not appended
    assert cfg.run.seed == 1


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        cfglib.load(tmp_path / "a.yaml")


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        cfglib.load(tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml \(line \d+"):
        cfglib.load(bad)


def test_env_interpolation(tmp_path, monkeypatch):
    path = write(tmp_path / "e.yaml", """
        data: {dataset_dir: "${DATA_ROOT}/merr", clips_dir: "${CLIPS_ROOT:-/clips}/raw"}
    """)
    monkeypatch.setenv("DATA_ROOT", "/mnt/data")
    monkeypatch.delenv("CLIPS_ROOT", raising=False)
    cfg = cfglib.load(path)
    assert cfg.data.dataset_dir == "/mnt/data/merr"
    assert cfg.data.clips_dir == "/clips/raw"
    monkeypatch.delenv("DATA_ROOT")
    with pytest.raises(ConfigError) as info:
        cfglib.load(path)
    assert "data.dataset_dir" in str(info.value) and "DATA_ROOT" in str(info.value)
    assert "e.yaml" in str(info.value)


def test_unknown_key_names_key_file_and_closest_valid_key(tmp_path):
    base = write(tmp_path / "base.yaml", "train:\n  lrr: 0.1\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nrun: {seed: 3}\n")
    with pytest.raises(ConfigError) as info:
        cfglib.load(child)
    err = info.value
    assert "'train.lrr'" in err.message
    assert str(base) in err.message  # the file that actually set it, not the child
    assert "'train.lr'" in err.hint


def test_unknown_key_from_the_command_line_says_so():
    with pytest.raises(ConfigError) as info:
        cfglib.load(None, ["model.backbone.name_or_pth=/x"])
    assert "model.backbone.name_or_pth" in info.value.message
    assert "command line" in info.value.message
    assert "model.backbone.name_or_path" in info.value.hint


def test_key_in_the_wrong_section_points_to_the_right_one():
    with pytest.raises(ConfigError) as info:
        cfglib.load(None, ["train.num_frames=8"])
    assert "media.num_frames" in info.value.hint


def test_bad_values_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match=r"'train.lr'.*expected a number"):
        cfglib.load(None, ["train.lr=fast"])
    with pytest.raises(ConfigError) as info:
        cfglib.load(None, ["train.lr_scheduler=cosin"])
    assert "'train.lr_scheduler'" in info.value.message and "cosine" in info.value.hint
    with pytest.raises(ConfigError, match="train.per_device_batch_size"):
        cfglib.load(None, ["train.per_device_batch_size=0"])
    with pytest.raises(ConfigError, match="bad override"):
        cfglib.load(None, ["train.lr"])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["train.bf16=true", "train.fp16=true"], "train.fp16"),
        (["train.stage=2"], "train.init_from"),
        (["media.fps=5"], "media.num_frames"),  # num_frames and fps both set
        (["model.encoders.audio.modality=audio"], "model.encoders.audio.name_or_path"),
        (["train.lora.enabled=false", "train.quantization=4bit"], "train.quantization"),
        (["build.au_source=openface_csv"], "build.openface_dir"),
        (["run.output_dir=/r", "train.init_from=/r/", "train.stage=2"], "train.init_from"),
        (["schema_version=99"], "schema_version"),
    ],
)
def test_cross_field_checks_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        cfglib.load(None, overrides)
    assert f"'{key}'" in info.value.message


def test_home_paths_are_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CKPT_ROOT", raising=False)
    cfg = cfglib.load(None, ["data.dataset_dir=~/merr", "model.backbone.name_or_path=${CKPT_ROOT:-~/ckpt}/llama"])
    assert cfg.data.dataset_dir == f"{tmp_path}/merr"
    assert cfg.model.backbone.name_or_path == f"{tmp_path}/ckpt/llama"


def test_encoder_modality_defaults_to_its_name_else_is_required():
    cfg = cfglib.load(None, ["model.encoders.face.name_or_path=/mae", "model.encoders.au={}"])
    assert cfg.model.encoders["face"].modality == "face" and cfg.model.encoders["au"].modality == "au"
    with pytest.raises(ConfigError) as info:
        cfglib.load(None, ["model.encoders.eva.name_or_path=/eva"])
    assert "'model.encoders.eva.modality'" in info.value.message


def test_dict_sections_build_typed_entries():
    cfg = cfglib.load(None, ["model.encoders.speech.modality=audio", "model.encoders.speech.name_or_path=/hubert",
                             "model.encoders.speech.projector_options={regroup: 2}", "model.fusion.depth=2"])
    enc = cfg.model.encoders["speech"]
    assert isinstance(enc, cfglib.EncoderConfig) and enc.name_or_path == "/hubert"
    assert enc.projector_options == {"regroup": 2} and cfg.model.fusion.depth == 2
    with pytest.raises(ConfigError, match="model.encoders.speech.num_input_tokens"):
        cfglib.load(None, ["model.encoders.speech.modality=audio", "model.encoders.speech.name_or_path=/h",
                           "model.encoders.speech.num_input_tokens=0"])


def test_resolved_config_round_trips(tmp_path):
    cfg = cfglib.load("tiny_cpu", ["train.lr=3e-5", "model.encoders.au.modality=au"])
    saved = cfglib.save_resolved(cfg, tmp_path / "out", command="test")
    assert saved == tmp_path / "out" / "config.yaml"
    text = saved.read_text()
    assert text.startswith("# Resolved emollm config")
    again = cfglib.load(saved)
    assert again == cfg


def test_a_duplicate_key_names_the_key_the_file_and_both_lines(tmp_path):
    path = write(tmp_path / "run.yaml", """\
        train:
          lr: 1.0e-4
          epochs: 2
          lr: 2.0e-5
        """)
    with pytest.raises(ConfigError) as err:
        cfglib.load(path)
    message = err.value.message
    assert str(path) in message and "line 4" in message and "duplicate key 'lr'" in message
    assert "first set at line 2" in message
    # the same key in two sections, and a `<<` merge overridden on purpose, are not duplicates
    ok = write(tmp_path / "ok.yaml", """\
        x-defaults: &d {lr: 1.0e-4}
        train: {<<: *d, lr: 3.0e-5, epochs: 2}
        predict: {max_new_tokens: 8}
        """)
    assert cfglib.load_raw(ok).data["train"]["lr"] == 3.0e-5


def test_a_duplicate_key_in_an_override_value_is_an_error():
    with pytest.raises(ConfigError, match="bad override .*duplicate key 'x'"):
        cfglib.load(None, ["model.encoders.audio.options={x: 1, x: 2}"])


def test_yaml_loading_stays_safe(tmp_path):
    """Python tags (which would build objects, or run code) are refused, as by yaml.safe_load."""
    path = write(tmp_path / "evil.yaml", """\
        run: !!python/object/apply:os.system ["echo pwned > evil_ran"]
        """)
    with pytest.raises(ConfigError, match="invalid YAML"):
        cfglib.load(path)
    assert not Path("evil_ran").exists()


def test_the_config_hint_only_on_config_errors(tmp_path):
    from emollm.errors import CONFIG_SHOW_HINT

    with pytest.raises(ConfigError) as bad_value:
        cfglib.load(None, ["train.lr=fast"])
    assert bad_value.value.hint == CONFIG_SHOW_HINT
    # a ConfigError raised for something else (a command's arguments) carries no config advice by default
    assert ConfigError("no clip given").hint is None
