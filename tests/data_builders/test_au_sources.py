"""AU sources: one registry entry each; the builder, the analysis and the provenance read it."""

from __future__ import annotations

import importlib
import json
import shutil

import numpy as np
import pytest

from data_builders.au import AUSeries
from data_builders.au.sources import AUSource, au_sources, get_au_source, register_au_source
from data_builders.runner import au_fingerprint, build
from emollm import config
from emollm.dataset.aus import MERR_AUS
from emollm.errors import ConfigError


def test_the_shipped_sources_and_what_they_declare():
    assert au_sources() == ["builtin", "openface_csv", "openface_bin"]
    for name in au_sources():
        src = get_au_source(name)
        assert src.version == importlib.import_module(src.module).VERSION
        assert src.from_analysis == (name == "builtin") and (src.read is None) == (name == "builtin")
    assert get_au_source("openface_bin").check is not None  # a missing binary fails before any clip
    with pytest.raises(ConfigError, match="unknown build.au_source 'nope' \\(registered: builtin, openface_csv"):
        get_au_source("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_au_source(AUSource("builtin", module="data_builders.au.landmark_au", from_analysis=True))


def test_a_registered_reader_feeds_the_build(sample_dir, tmp_path):
    """Swap the registry's openface_csv entry for a reader that says 'AU12 at 4.0 on every frame': the
    build takes its AUs, peak and pseudo-label from it and names the entry's version."""
    calls = []

    def smiling(clip, info, cfg):  # noqa: ANN001
        calls.append(clip.id)
        n = 3
        intensity = np.zeros((n, len(MERR_AUS)), np.float32)
        intensity[:, MERR_AUS.index("AU12")] = 4.0
        intensity[:, MERR_AUS.index("AU06")] = 3.0
        return AUSeries(intensity=intensity, presence=(intensity > 0).astype(np.uint8), frame_indices=np.arange(n),
                        timestamps_s=np.arange(n) / 25.0, face=np.ones(n, bool), source="test_smiling")

    original = get_au_source("openface_csv")
    register_au_source(AUSource("openface_csv", module=original.module, read=smiling,
                                settings=lambda cfg, clip: {"reader": "smiling/1"}), replace=True)
    try:
        clips = tmp_path / "clips"
        clips.mkdir()
        shutil.copy(sample_dir / "single_face.jpg", clips / "still.jpg")
        cfg = config.load(None, ["build.au_source=openface_csv", f"build.openface_dir={tmp_path}", "build.tone=none"])
        summary = build(cfg, clips, tmp_path / "ds")
        assert summary.failed == 0 and calls == ["still"]
        rec = json.loads((tmp_path / "ds" / "annotations.jsonl").read_text(encoding="utf-8"))
        assert rec["aus_at_peak"]["AU12"] == 4.0 and rec["provenance"]["au"] == {"source": "openface_csv",
                                                                                  "version": original.version}
        assert rec["pseudo_label"] == "happy"
        clip = type("Clip", (), {"id": "still", "path": clips / "still.jpg"})()
        before = au_fingerprint(cfg, clip)
        register_au_source(AUSource("openface_csv", module=original.module, read=smiling,
                                    settings=lambda cfg, clip: {"reader": "smiling/2"}), replace=True)
        assert au_fingerprint(cfg, clip) != before  # the entry's settings decide reuse
    finally:
        register_au_source(original, replace=True)
