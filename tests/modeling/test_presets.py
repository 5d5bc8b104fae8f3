"""The Emotion-LLaMA presets: 260 media tokens, one line to switch the backbone, real feature sizes."""

from __future__ import annotations

import pytest
import torch

from emollm import config as cfglib
from emollm.config import to_dict
from emollm.modeling.factory import build_model_and_processor
from emollm.prompts import emotion_llama_sample
from emollm.testing.tiny import build_tiny_models

PRESETS = {"emotion_llama_llama2": "llama2", "emotion_llama_mistral": "mistral", "emotion_llama_llama3": "llama3"}
TEMPLATES = {"emotion_llama_llama2": "emotion_llama", "emotion_llama_mistral": "mistral", "emotion_llama_llama3": "llama3"}


def test_switching_the_backbone_changes_only_the_backbone():
    base = to_dict(cfglib.load("emotion_llama_llama2"))
    for name in ("emotion_llama_mistral", "emotion_llama_llama3"):
        other = to_dict(cfglib.load(name))
        assert other["model"]["encoders"] == base["model"]["encoders"]
        assert other["train"] == base["train"] and other["media"] == base["media"]
        assert other["model"]["backbone"]["name_or_path"] != base["model"]["backbone"]["name_or_path"]


@pytest.mark.parametrize("preset, tiny_name", PRESETS.items())
def test_preset_at_real_feature_sizes_on_the_tiny_backbone(preset, tiny_name):
    tiny = build_tiny_models(names=[tiny_name])
    cfg = cfglib.load(preset, [f"model.backbone.name_or_path={tiny[tiny_name]}", "model.backbone.torch_dtype=float32"])
    torch.manual_seed(0)
    model, processor = build_model_and_processor(cfg)
    counts = {name: model.num_media_tokens(name) for name in model.config.modalities}
    assert counts == {"video": 257, "face": 1, "temporal": 1, "audio": 1}  # Emotion-LLaMA's 260 media tokens
    video = model.media.projector.projectors["video"]
    assert video.layer.proj.in_features == 4 * 1408  # EVA-CLIP patches regrouped 4 -> 1: 256 x 5632
    assert processor.template.name == TEMPLATES[preset]
    assert processor.placeholders == ["video", "face", "temporal", "audio", "video_cls"]

    sample = emotion_llama_sample("c1", "emotion", "I told you so", target="angry", modalities=processor.placeholders)
    batch = processor.collate([processor.encode(sample)])
    media = {"video": torch.randn(1, 1025, 1408), "face": torch.randn(1, 1, 1024),
             "temporal": torch.randn(1, 1, 1024), "audio": torch.randn(1, 1, 1024)}
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                media=media)
    assert torch.isfinite(out.loss)
    assert sum(int((batch["input_ids"] == i).sum()) for i in processor.media_token_ids.values()) == 260
