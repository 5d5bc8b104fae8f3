"""The AU encoder's defaults, declared once (au_encoder.AU_ENCODER_DEFAULTS): what each path builds.

A bare ``AUEncoder()`` and the ``au`` registry entry give 1 token; a model's AU modality without
``au_encoder.num_tokens`` gives 4 (MODEL_AU_NUM_TOKENS). These are the values from before the defaults
were unified; the numbers are written out so a changed default fails here.
"""

from __future__ import annotations

import torch

from emollm.config import EncoderConfig, ModelConfig
from emollm.modeling import EmoLLMForConditionalGeneration
from emollm.modeling.au_encoder import AUEncoder
from emollm.modeling.encoders import build_encoder
from emollm.modeling.factory import modality_specs
from emollm.testing.tiny import build_tiny_models

SIZES = {"hidden_size": 256, "depth": 1, "num_heads": 4, "max_frames": 128}


def _sizes(module: AUEncoder) -> dict:
    return {
        "hidden_size": module.hidden_size,
        "depth": len(module.frames.layers),
        "num_heads": module.cross_attn.num_heads,
        "max_frames": module.max_frames,
    }


def test_a_bare_au_encoder_and_the_registry_entry_give_one_token():
    module = AUEncoder()
    assert module.num_tokens == 1 and module.num_aus == 17 and _sizes(module) == SIZES
    enc = build_encoder("au")
    assert enc.options == {"num_aus": 17, "num_tokens": 1, **SIZES, "dropout": 0.0}
    assert enc.num_tokens() == 1
    torch.manual_seed(0)
    built = enc.build_module()
    torch.manual_seed(0)
    explicit = AUEncoder(num_aus=17, num_tokens=1, hidden_size=256, depth=1, num_heads=4, max_frames=128, dropout=0.0)
    # same defaults, same initial weights
    assert all(
        torch.equal(a, b) for a, b in zip(built.state_dict().values(), explicit.state_dict().values(), strict=True)
    )


def test_a_model_au_modality_without_options_gets_four_tokens():
    specs = modality_specs(ModelConfig(encoders={"au": EncoderConfig()}))
    assert specs["au"]["au_encoder"] == {} and specs["au"]["feature_dim"] == 34  # the config records only what was set
    path = build_tiny_models(names=["llama2"])["llama2"]
    model = EmoLLMForConditionalGeneration.from_backbone(path, {"au": specs["au"]}, media_token_ids={"au": 5000})
    encoder = model.media.au_encoders["au"]
    assert encoder.num_tokens == 4 and model.num_media_tokens("au") == 4 and _sizes(encoder) == SIZES
    assert model.config.modalities["au"]["au_encoder"] == {}  # the saved config.json is unchanged
