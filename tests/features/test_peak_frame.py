"""A `frames: peak` visual encoder is fed the builder's peak frame, in the cache and at inference."""

from __future__ import annotations

import json
import shutil

import torch

from emollm import config as cfglib
from emollm.cli import main as cli
from emollm.features.cache import FeatureCache
from emollm.media.video import read_frames
from emollm.modeling.encoders import build_encoder
from emollm.testing.tiny import build_tiny_models


def test_peak_frame_features_are_the_encoder_on_the_peak_frame(sample_dir, tmp_path):
    build_tiny_models()
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(sample_dir / "single_face.mp4", clips / "single_face.mp4")
    dataset = tmp_path / "dataset"
    assert cli.main(["--quiet", "build", str(clips), "--out", str(dataset), "build.au_fps=3"]) == 0
    record = json.loads((dataset / "annotations.jsonl").read_text().splitlines()[0])
    peak = record["peak_frame"]["index"]
    assert peak is not None

    def cached(frames: str) -> torch.Tensor:
        overrides = ["media.num_frames=4", f"model.encoders.video.options.frames={frames}"]
        assert cli.main(["--quiet", "features", "--config", "tiny_cpu", str(dataset), *overrides]) == 0
        cfg = cfglib.load("tiny_cpu", overrides)
        enc = cfg.model.encoders["video"]
        cache = FeatureCache.from_config(cfg, dataset)
        cache.bind("video", enc.modality, enc.name_or_path, enc.options)
        return cache.get("single_face", "video").float()

    on_peak, on_sampled = cached("peak"), cached("sampled")
    cfg = cfglib.load("tiny_cpu")
    enc = cfg.model.encoders["video"]
    encoder = build_encoder(enc.modality, enc.name_or_path, **{**enc.options, "frames": "peak"})
    expected = encoder.extract(read_frames(sample_dir / "single_face.mp4", [peak]).array)
    assert torch.allclose(on_peak, expected, atol=2e-2)  # the cache stores float16
    # a different input choice is a different cache entry (fingerprint), never a stale hit
    assert on_peak.shape == on_sampled.shape and not torch.allclose(on_peak, on_sampled, atol=2e-2)
    folders = list((dataset / "features" / "video").iterdir())
    assert len(folders) == 2
