"""`emollm demo`: the end-to-end run on the offline default, and on a user's clip."""

from __future__ import annotations

import json
import os

import pytest
from safetensors.torch import load_file

from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.testing.tiny import SPECS, default_cache_dir

pytestmark = pytest.mark.slow


def test_tiny_cpu_config_points_at_the_built_tiny_models():
    cfg = cfglib.load("tiny_cpu")
    root = default_cache_dir()
    assert os.path.expanduser(cfg.model.backbone.name_or_path) == str(root / "llama2")
    for name, enc in cfg.model.encoders.items():
        if enc.modality != "au":
            assert os.path.dirname(os.path.expanduser(enc.name_or_path)) == str(root), name


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "TINY model" in stdout and "model.backbone.name_or_path=" in stdout
    assert "not built yet" in stdout

    summary = json.loads((out / "summary.json").read_text())
    for name in ("config", "frames", "faces", "features", "summary", "dataset", "report"):
        assert os.path.isfile(summary["artefacts"][name]), name
    # The resolved config next to the outputs loads back to the config the demo ran with.
    assert cfglib.load(out / "config.yaml") == cfglib.load("tiny_cpu")

    facts = summary["facts"]
    n = cfglib.load("tiny_cpu").media.num_frames
    assert len(facts["clip"]["sampled_frames"]) == n
    assert facts["faces"]["main_face_in_frames"] == n and facts["faces"]["tracks"] == 1
    features = load_file(out / "features.safetensors")
    hidden = {"audio": "hubert", "video": "clip_vision", "face": "vit_mae", "temporal": "videomae"}
    for name, tiny_name in hidden.items():
        assert features[name].shape[-1] == SPECS[tiny_name].hidden_size, name
    assert features["video"].shape[0] == 17  # CLS + 16 patches, averaged over the sampled frames
    model = facts["backbone"]
    assert model["prompt"].startswith("<s>[INST] <video><|emo_video|>")  # LLaMA-2-chat template, spans expanded
    assert model["modalities_in_prompt"] == ["au", "audio", "face", "temporal", "video"]
    assert model["media_tokens"] == 5 + 1 + 1 + 1 + 2
    assert features["au"].shape[-1] == 34  # the builder's AU sequence: 17 intensities + 17 presences
    assert facts["dataset"]["pseudo_label"] == "happy"  # the builder on the smiling sample clip
    assert os.path.isfile(summary["artefacts"]["dataset"]) and os.path.isfile(summary["artefacts"]["report"])
    assert facts["training"]["steps"] == 4 and len(facts["training"]["losses"]) == 4
    assert (out / "run" / "adapter" / "adapter_config.json").is_file()  # the run dir inference needs
    assert facts["evaluation"]["reference"] == "happy" and 0.0 <= facts["evaluation"]["invalid_rate"] <= 1.0
    assert {item["lands_with"] for item in summary["not_built_yet"]} >= {"issue 4", "issue 8"}


def test_demo_on_an_audio_only_clip_skips_what_it_cannot_see(broken, tmp_path):
    out = tmp_path / "audio"
    assert cli.main(["--quiet", "demo", "--clip", str(broken["audio_only_wav"]), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["facts"]["features"]) == {"audio"}
    assert summary["facts"]["backbone"]["modalities_in_prompt"] == ["audio"]
    assert summary["facts"]["dataset"]["pseudo_label"] is None and "skipped" in summary["facts"]["evaluation"]
    assert "skipped" in summary["facts"]["training"]
    assert "frames" not in summary["artefacts"]


def test_demo_on_a_broken_clip_is_one_clear_error(broken, tmp_path, capsys):
    assert cli.main(["demo", "--clip", str(broken["truncated"]), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"error: {broken['truncated']}:" in err and "Traceback" not in err
