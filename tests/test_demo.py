"""`emollm demo`: the end-to-end run on the offline default, and on a user's clip."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from safetensors.torch import load_file

from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.demo import TINY_TRAIN_STEPS
from emollm.testing.tiny import default_cache_dir

pytestmark = pytest.mark.slow


def test_tiny_cpu_config_points_at_the_built_tiny_models():
    cfg = cfglib.load("tiny_cpu")
    root = default_cache_dir()
    assert os.path.expanduser(cfg.model.backbone.name_or_path) == str(root / "llama2")
    for name, enc in cfg.model.encoders.items():
        if enc.modality != "au":
            assert os.path.dirname(os.path.expanduser(enc.name_or_path)) == str(root), name


def test_tiny_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--tiny", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "TINY model" in stdout and "model.backbone.name_or_path=" in stdout
    assert "label:" in stdout and "reasoning:" in stdout

    summary = json.loads((out / "summary.json").read_text())
    for name in ("config", "dataset", "run", "predictions", "report", "frames", "faces", "summary"):
        assert os.path.exists(summary["artefacts"][name]), name
    assert list(summary["stages_s"]) == [
        "config",
        "models",
        "clips",
        "build",
        "features",
        "train",
        "predict",
        "evaluate",
        "infer",
    ]
    # The resolved config next to the outputs loads back to the config the demo ran with.
    assert cfglib.load(out / "config.yaml") == cfglib.load("tiny_cpu")

    facts = summary["facts"]
    assert len(summary["clips"]) == 5 and facts["dataset"]["records"] == 5
    assert facts["dataset"]["pseudo_labels"]["single_face"] == "happy"  # the builder on the smiling sample clip
    assert facts["dataset"]["pseudo_labels"]["no_face"] is None
    assert facts["training"]["steps"] == TINY_TRAIN_STEPS
    assert facts["training"]["losses"][-1] < facts["training"]["losses"][0]
    assert (out / "run" / "adapter" / "adapter_config.json").is_file()  # the run dir inference needs
    predictions = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(p["id"] for p in predictions) == sorted(facts["dataset"]["pseudo_labels"])
    evaluation = facts["evaluation"]
    assert evaluation["n"] == 4 and 0.0 <= evaluation["war"] <= 1.0  # the four clips with a face
    assert evaluation["references"] == {"pseudo_label": 4} and "trained on" in evaluation["split"]
    assert "against 4 pseudo-labels" in stdout
    infer = facts["infer"]
    assert infer["error"] is None and infer["label"] == "happy"
    assert infer["text"].startswith("The person's face shows") and infer["text"].endswith("feels happy.")
    assert infer["cues"]["modalities_fed"] == ["au", "audio", "face", "temporal", "video"]
    assert infer["cues"]["aus_present_at_peak"] and infer["cues"]["prompt"].startswith("<s>[INST] <video><|emo_video|>")
    assert facts["backbone"]["kind"] == "tiny"
    assert facts["backbone"]["media_tokens"] == {"video": 5, "face": 1, "temporal": 1, "audio": 1, "au": 2}
    (video_cache,) = (out / "dataset" / "features" / "video").iterdir()
    assert load_file(video_cache / "single_face.safetensors")["features"].shape[0] == 17  # CLS + 16 patches


def test_demo_on_an_audio_only_clip_skips_what_it_cannot_see(broken, tmp_path):
    out = tmp_path / "audio"
    assert (
        cli.main(
            ["--quiet", "demo", "--tiny", "--clip", str(broken["audio_only_wav"]), "--out", str(out), "--steps", "2"]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    facts = summary["facts"]
    assert list(facts["dataset"]["pseudo_labels"].values()) == [None]
    assert "skipped" in facts["training"] and "skipped" in facts["evaluation"]
    assert facts["infer"]["cues"]["modalities_fed"] == ["audio"]
    assert "frames" not in summary["artefacts"]


def test_demo_on_a_broken_clip_is_one_clear_error(broken, tmp_path, capsys):
    assert cli.main(["demo", "--tiny", "--clip", str(broken["truncated"]), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"error: {broken['truncated']}:" in err and "Traceback" not in err


@pytest.mark.real_models
def test_demo_on_the_real_models_trains_on_train_and_scores_the_held_out_clips(tmp_path, capsys):
    """The default demo: SmolLM2 as the backbone, whisper-base subtitles on the espeak-ng clips, people's
    labels on a held-out split. Lean (4 steps): the path, not the accuracy (benchmarks measure that)."""
    from emollm import real_models
    from emollm.testing.labelled_clips import LABELLED_SEGMENTS
    from emollm.testing.speech import can_speak

    for name in ("smollm2-135m-instruct", "whisper-base"):
        if not real_models.is_fetched(name):
            pytest.skip(f"{name} is not fetched (emollm models fetch)")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "4"]) == 0
    stdout = capsys.readouterr().out
    assert "A REAL pretrained LLM (smollm2-135m-instruct" in stdout and "TINY" not in stdout
    facts = json.loads((out / "summary.json").read_text())["facts"]
    assert facts["backbone"]["kind"] == "real:smollm2-135m-instruct" and facts["backbone"]["template"] == "smollm2"
    assert facts["backbone"]["parameters"] > 130_000_000
    test_ids = sorted(k for k, s in LABELLED_SEGMENTS.items() if s.split == "test")
    assert facts["training"]["split"] == "train" and facts["training"]["steps"] == 4
    assert sorted(facts["predict"]["answers"]) == test_ids  # only the held-out clips are predicted ...
    assert facts["evaluation"]["references"] == {"label": len(test_ids)}  # ... and scored against people's labels
    assert f"against {len(test_ids)} people-labels" in stdout
    if can_speak():  # whisper-base heard the synthesised sentences
        assert "happy" in facts["dataset"]["subtitles"]["wl_happy_17"].lower()
        assert "sad" in facts["dataset"]["subtitles"]["wl_sad_2"].lower()
    infer = facts["infer"]
    assert infer["error"] is None and infer["clip"].endswith("wl_happy_17.mp4")
    assert len(infer["text"].split()) >= 5 and infer["text"].isascii()


def test_demo_over_symlink_loops_is_one_clear_error(tmp_path, capsys):
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    clips = tmp_path / "clips"
    clips.mkdir()
    os.symlink(clips / "x.mp4", clips / "x.mp4")  # a "clip" that is a link to itself
    os.symlink(clips, clips / "again")  # and a folder link back to its own folder
    for args in (["--clip", str(tmp_path / "a")], ["--clip", str(clips)], ["--clip", str(clips / "again" / "again")],
                 ["--out", str(tmp_path / "a")]):  # fmt: skip
        out = [] if "--out" in args else ["--out", str(tmp_path / "out")]
        assert cli.main(["demo", "--tiny", *args, *out, "--steps", "1"]) == 2, args
        err = capsys.readouterr().err
        assert "this is a bug" not in err and "error: " in err and ("loop" in err or "symbolic links" in err), err


def test_demo_clip_folder_keeps_same_named_clips_in_subfolders(sample_dir, tmp_path):
    from emollm.demo import _demo_clips

    for speaker in ("speaker1", "speaker2"):
        (tmp_path / "in" / speaker).mkdir(parents=True)
        shutil.copy(sample_dir / "single_face.jpg", tmp_path / "in" / speaker / "clip.jpg")
    clips, _, _ = _demo_clips(tmp_path / "in", True, tmp_path / "out")
    assert len(clips) == 2  # linked flat by file name, the second would have been silently the first
    linked = sorted(
        p.relative_to(tmp_path / "out" / "clips").as_posix() for p in (tmp_path / "out" / "clips").rglob("*.jpg")
    )
    assert linked == ["speaker1/clip.jpg", "speaker2/clip.jpg"]
    assert {os.path.realpath(tmp_path / "out" / "clips" / p) for p in linked} == {str(c.resolve()) for c in clips}
