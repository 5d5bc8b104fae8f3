"""An `emollm export --model` directory loads like the run it came from: `emollm infer`, `emollm predict`
and `emollm.load` take it (merged or not, moved elsewhere) and answer as the run does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import emollm
from emollm.cli import main as cli
from emollm.exporting import export_model


def _rows(path: Path) -> dict[str, str]:
    return {r["id"]: r["text"] for r in map(json.loads, path.read_text().splitlines()) if r}


@pytest.fixture(scope="module")
def exports(trained_run, tmp_path_factory):
    """The trained run exported unmerged and merged; the unmerged one then moved (the original removed)
    so only its relative names can find its copies."""
    run, _ = trained_run
    root = tmp_path_factory.mktemp("exports")
    export_model(run, root / "plain")
    export_model(run, root / "merged", merge=True)
    moved = root / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(root / "plain", moved)
    return {"plain": moved, "merged": root / "merged"}


@pytest.fixture(scope="module")
def run_answers(trained_run, tiny_dataset, tmp_path_factory):
    run, labels = trained_run
    dataset, _ = tiny_dataset
    out = tmp_path_factory.mktemp("run_preds") / "preds.jsonl"
    assert cli.main(["--quiet", "predict", "--model", str(run), str(dataset), "--split", "all", "--out", str(out)]) == 0
    answers = _rows(out)
    assert {k: v.strip() for k, v in answers.items()} == labels  # the overfit run answers the pseudo-labels
    return answers


@pytest.mark.parametrize("kind", ["plain", "merged"])
def test_predict_on_an_export_answers_as_the_run_does(exports, run_answers, tiny_dataset, tmp_path, monkeypatch, kind):
    dataset, _ = tiny_dataset
    monkeypatch.chdir(tmp_path)  # another working directory: nothing may resolve against the old one
    out = tmp_path / "preds.jsonl"
    assert cli.main(["--quiet", "predict", "--model", str(exports[kind]), str(dataset), "--split", "all",
                     "--out", str(out)]) == 0
    assert _rows(out) == run_answers


def test_infer_and_the_python_api_take_an_export(trained_run, exports, sample_dir, capsys):
    run, _ = trained_run
    clip = sample_dir / "single_face.mp4"
    reference = emollm.load(run, device="cpu").explain(clip, task="emotion")
    assert reference.ok and reference.label == "happy"

    explainer = emollm.load(exports["plain"], device="cpu")  # unmerged: adapter + backbone/ copy
    assert explainer.model.is_lora
    assert explainer.model.config.backbone_name_or_path == str(exports["plain"] / "backbone")
    assert explainer.cfg.model.encoders["audio"].name_or_path == str(exports["plain"] / "encoders" / "audio")
    result = explainer.explain(clip, task="emotion")
    assert result.text == reference.text and set(result.cues["modalities_fed"]) == set(reference.cues["modalities_fed"])

    code = cli.main(["--quiet", "infer", "--model", str(exports["merged"]), str(clip), "--task", "emotion", "--json"])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert code == 0 and len(out) == 1
    assert out[0]["error"] is None and out[0]["label"] == "happy" and out[0]["text"] == reference.text


def test_an_export_without_a_run_config_says_what_is_missing(exports, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(exports["merged"], bare)
    (bare / "config.yaml").unlink()
    assert cli.main(["--quiet", "infer", "--model", str(bare), "clip.mp4"]) == 2
    err = capsys.readouterr().err
    assert "no config.yaml" in err and "emollm export --model" in err
