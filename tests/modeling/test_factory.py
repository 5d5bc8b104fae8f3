"""Model + processor from a config, and the run dir round trip (config, media modules, processor, LoRA)."""

from __future__ import annotations

import pytest
import torch

from emollm import config as cfglib
from emollm.errors import EmollmError
from emollm.modeling.factory import build_model_and_processor, load_run, save_run
from emollm.prompts import emotion_llama_sample
from emollm.testing.tiny import build_tiny_models

ALL = ("video", "face", "temporal", "audio", "au")


@pytest.fixture(scope="module")
def built():
    build_tiny_models()
    torch.manual_seed(0)
    return build_model_and_processor(cfglib.load("tiny_cpu"))


def inputs(model, processor, present=ALL):
    sample = emotion_llama_sample("clip-7", "emotion", "I can't believe it", target="happy", modalities=ALL)
    batch = processor.collate([processor.encode(sample, set(present)), processor.encode(sample)])
    torch.manual_seed(3)
    media = {n: torch.randn(2, s["num_input_tokens"], s["feature_dim"])
             for n, s in model.config.modalities.items() if s["kind"] != "au"}
    media["au"] = torch.rand(2, 8, 34)
    return batch, media


def test_config_builds_the_emotion_llama_layout(built):
    model, processor = built
    assert list(model.config.modalities) == list(ALL)
    # CLS + 16 patches of the tiny CLIP, regrouped 4 -> 1: 1 + 4 tokens; pooled encoders: 1 each; AU: 2
    assert {n: model.num_media_tokens(n) for n in ALL} == {"video": 5, "face": 1, "temporal": 1, "audio": 1, "au": 2}
    assert model.config.modalities["video"]["feature_dim"] == 56  # read from the checkpoint config
    assert processor.template.name == "llama2" and model.config.template == "llama2"
    assert model.config.media_token_ids == processor.media_token_ids
    text = processor.render(emotion_llama_sample("c", "emotion", "hi", modalities=ALL))
    assert text.startswith("<s>[INST] <video>" + "<|emo_video|>" * 5 + "</video> <feature><|emo_face|>")


def test_run_dir_round_trip_with_lora(built, tmp_path):
    model, processor = built
    model.add_lora(r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    batch, media = inputs(model, processor, present=("video", "face", "audio"))  # row 0 lacks temporal + AU
    assert batch["media_present"]["temporal"].tolist() == [False, True]
    model.eval()
    with torch.no_grad():
        before = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=media,
                       media_present=batch["media_present"]).logits
    save_run(model, processor, tmp_path / "run")
    loaded, loaded_processor = load_run(tmp_path / "run")
    assert loaded_processor.media_token_ids == processor.media_token_ids
    # the loaded run builds the prompt training built: modalities in the config's order (not config.json's sorted one)
    assert loaded_processor.encode(emotion_llama_sample("x", "reason", "hm", modalities=tuple(loaded.config.modalities))) == \
        processor.encode(emotion_llama_sample("x", "reason", "hm", modalities=ALL))
    with torch.no_grad():
        after = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=media,
                       media_present=batch["media_present"]).logits
    assert torch.equal(before, after)


def test_a_typo_in_an_encoder_option_names_it():
    cfg = cfglib.load("tiny_cpu", ["model.encoders.video.options={tokens: cls+pach}"])
    with pytest.raises(EmollmError, match="cls\\+pach"):
        build_model_and_processor(cfg)


def test_not_a_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(EmollmError, match="not an emollm run dir"):
        load_run(tmp_path)


def test_live_encoders_feed_the_model_and_shape_mismatch_is_clear(built):
    import numpy as np

    model, processor = built
    keys = set(model.state_dict())
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    features = model.encode_media({"video": frames, "audio": rng.standard_normal(16000).astype(np.float32)})
    assert features["video"].shape == (1, 17, 56) and features["audio"].shape == (1, 1, 32)
    assert set(model.state_dict()) == keys  # live encoders are neither saved nor trained with the model

    cfg = cfglib.load("tiny_cpu", ["model.encoders.video.num_input_tokens=9"])
    wrong, _ = build_model_and_processor(cfg)
    with pytest.raises(EmollmError, match=r"modality 'video'.*\(17, 56\).*\(9, 56\)"):
        wrong.encode_media({"video": frames})
