"""The `emollm` command: help, one-line errors, --debug tracebacks, config commands."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emollm import config as cfglib
from emollm.cli import main as cli

TRAIN_PY = str(Path(__file__).resolve().parents[2] / "train.py")
NOT_BUILT_YET = ("build", "features", "train", "predict", "infer", "evaluate", "export", "render")


def command_name(module: str) -> str:
    """The command a module under emollm/cli provides (``importing`` -> ``import``: a keyword as a module name)."""
    return importlib.import_module(f"emollm.cli.{module}").NAME


def run_cli(*argv: str):
    return subprocess.run([sys.executable, "-m", "emollm.cli.main", *argv], capture_output=True, text=True)


def test_help_lists_only_built_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in cli.COMMANDS:
        assert f"    {command_name(name)} " in result.stdout
    listed = result.stdout.split("commands:")[1]
    for name in NOT_BUILT_YET:
        if name not in cli.COMMANDS:
            assert f"    {name} " not in listed, f"'{name}' is listed but its capability is not built"


@pytest.mark.parametrize("name", cli.COMMANDS)
def test_each_command_help_shows_defaults(name, capsys):
    name = command_name(name)
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: emollm {name}" in out
    command = next(a for a in cli.build_parser()._subparsers._group_actions if a.dest == "command").choices[name]
    nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
    if nested:  # sub-commands only (emollm import): each of them shows its defaults
        for sub in nested[0].choices:
            with pytest.raises(SystemExit):
                cli.main([name, sub, "--help"])
            assert "(default:" in capsys.readouterr().out, sub
    else:
        assert "(default:" in out


def test_config_typo_is_one_line_with_a_hint(capsys):
    code = cli.main(["config", "show", "--config", "tiny_cpu", "train.lrr=1e-4"])
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines == ["error: unknown config key 'train.lrr' (from command line)", "hint: did you mean 'train.lr'?"]
    assert "Traceback" not in err


def test_debug_shows_the_traceback():
    result = run_cli("--debug", "config", "show", "train.lrr=1")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "error: unknown config key 'train.lrr'" in result.stderr


def test_unexpected_errors_say_bug_and_exit_1(monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(cfglib, "load", boom)
    assert cli.main(["config", "show"]) == 1
    err = capsys.readouterr().err
    assert "error: unexpected RuntimeError: kaboom" in err and "--debug" in err


def test_config_show_prints_a_loadable_resolved_config(tmp_path, capsys):
    assert cli.main(["config", "show", "--config", "tiny_cpu", "train.lr=3e-5", "--save", str(tmp_path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["lr"] == pytest.approx(3e-5)
    assert cfglib.load(tmp_path / "config.yaml") == cfglib.load("tiny_cpu", ["train.lr=3e-5"])


def test_config_keys_lists_every_leaf(capsys):
    assert cli.main(["config", "keys"]) == 0
    out = capsys.readouterr().out
    assert "train.lr  [float]  default: 0.0002" in out
    assert "media.face.crop_size  [int]  default: 224" in out


def test_unknown_arguments_are_rejected(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["config", "show", "--bogus"])
    assert info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_train_entry_checks_the_config():
    ok = subprocess.run([sys.executable, TRAIN_PY, "--config", "tiny_cpu", "--check", "train.lr=1e-5"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and yaml.safe_load(ok.stdout)["train"]["lr"] == pytest.approx(1e-5)
    bad = subprocess.run([sys.executable, TRAIN_PY, "--config", "tiny_cpu", "train.lrr=1e-5"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'train.lr'" in bad.stderr


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if a command gets as far as loading a model."""
    import emollm.inference as inference
    import emollm.modeling.factory as factory

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input paths were checked")

    monkeypatch.setattr(factory, "build_model_and_processor", refuse)
    monkeypatch.setattr(inference, "load_model", refuse)


def test_train_names_a_missing_dataset_before_any_model_loads(tmp_path, capsys, no_model_load):
    assert cli.main(["train", "--config", "tiny_cpu", f"run.output_dir={tmp_path}/r",
                     f"data.dataset_dir={tmp_path}/nope"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: data.dataset_dir: no such folder: {tmp_path}/nope (a built dataset)"
    assert "bug" not in err and not (tmp_path / "r").exists()
    # the accelerate entry, train.py, goes through the same check
    res = subprocess.run([sys.executable, TRAIN_PY, "--config", "tiny_cpu", f"data.dataset_dir={tmp_path}/nope",
                          f"run.output_dir={tmp_path}/r"], capture_output=True, text=True)
    assert res.returncode == 2 and f"no such folder: {tmp_path}/nope" in res.stderr


def test_a_missing_local_backbone_is_named_as_a_folder(tmp_path, capsys, no_model_load):
    ds = tmp_path / "ds"
    (ds / "features").mkdir(parents=True)
    (ds / "annotations.jsonl").write_text("")
    assert cli.main(["train", "--config", "tiny_cpu", f"data.dataset_dir={ds}",
                     "model.backbone.name_or_path=/data/llama"]) == 2
    err = capsys.readouterr().err
    assert "model.backbone.name_or_path: no such folder: /data/llama" in err
    assert "Repo id" not in err and "valid model identifier" not in err


def test_predict_and_infer_check_their_folders_first(tmp_path, capsys, no_model_load):
    assert cli.main(["predict", "--model", str(tmp_path / "run"), str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    assert f"--model: no such folder: {tmp_path / 'run'}" in capsys.readouterr().err
    assert cli.main(["infer", "--model", str(tmp_path / "run"), "clip.mp4"]) == 2
    err = capsys.readouterr().err
    assert f"--model: no such folder: {tmp_path / 'run'}" in err
    assert "config show" not in err  # not a config problem: no config advice


def test_a_duplicate_yaml_key_is_one_line_naming_file_and_line(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  lr: 2.0e-5\n")
    assert cli.main(["config", "show", "--config", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: {path} (line 3, column 3): invalid YAML: duplicate key 'lr' (first set at line 2)"
    assert len(err) == 1  # no hint that would not help
