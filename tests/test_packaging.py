"""An installed (non-editable) wheel carries the packages and finds the data folders."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)],
        check=True,
    )
    (whl,) = out.glob("emollm-*.whl")
    return whl


def test_wheel_holds_the_packages_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("emollm/__init__.py", "data_builders/__init__.py", "eval/__init__.py", "emollm/cli/main.py"):
        assert module in names
    assert "emollm/_data/train_configs/tiny_cpu.yaml" in names
    assert "emollm/_data/prompts/README.md" in names
    assert "emollm/dataset/label_sets/merr.yaml" in names and "emollm/dataset/label_sets/synonyms.yaml" in names
    shipped = {p.name for p in (REPO / "train_configs").glob("*.yaml")}
    assert shipped <= {Path(n).name for n in names if n.startswith("emollm/_data/train_configs/")}


def test_installed_wheel_finds_data_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    code = (
        "import emollm.resources as r, emollm.config as c, data_builders, eval;"
        "print(r.train_configs_dir()); print(r.prompts_dir()); print(c.load('tiny_cpu').run.name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(target)) and out[0].endswith("_data/train_configs")
    assert out[1].startswith(str(target)) and out[1].endswith("_data/prompts")
    assert out[2] == "tiny_cpu"
