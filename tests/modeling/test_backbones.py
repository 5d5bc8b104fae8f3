"""The backbone-family registry: detection, chat template and LoRA targets per family, as before the registry."""

from __future__ import annotations

import copy

import pytest
from transformers import AutoConfig, AutoTokenizer

from emollm import config as cfglib
from emollm import real_models
from emollm import templates as T
from emollm.errors import EmollmError
from emollm.modeling import backbones as B
from emollm.modeling import default_lora_targets
from emollm.resources import train_configs_dir
from emollm.testing.tiny import build_tiny_models

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_models(names=["llama2", "mistral", "llama3"])


# tiny model -> (template from its tokenizer, from its config (None: cannot tell), LoRA targets)
TINY_EXPECTED = {
    "llama2": ("llama2", None, ALL_PROJ),  # model_type llama, vocab 1000: the config alone cannot tell
    "mistral": ("mistral", "mistral", ALL_PROJ),
    "llama3": ("llama3", None, ALL_PROJ),
}


@pytest.mark.parametrize("name", sorted(TINY_EXPECTED))
def test_tiny_backbones_get_the_same_template_and_lora_targets_as_before(tiny, name):
    from_tokenizer, from_config, targets = TINY_EXPECTED[name]
    tok, config = AutoTokenizer.from_pretrained(tiny[name]), AutoConfig.from_pretrained(tiny[name])
    assert T.template_for(tok).name == from_tokenizer
    if from_config is None:
        with pytest.raises(EmollmError, match="cannot tell"):
            T.template_for(config)
    else:
        assert T.template_for(config).name == from_config
    assert default_lora_targets(config) == targets


def test_real_smollm2_is_detected_as_smollm2():
    if not real_models.is_fetched("smollm2-135m-instruct"):
        pytest.skip("smollm2-135m-instruct is not in the emollm cache")
    folder = real_models.model_dir("smollm2-135m-instruct", fetch=False)
    assert T.template_for(AutoTokenizer.from_pretrained(folder)).name == "smollm2"
    config = AutoConfig.from_pretrained(folder)
    assert default_lora_targets(config) == ALL_PROJ  # a LLaMA architecture
    with pytest.raises(EmollmError, match="cannot tell"):  # vocab 49152: not a LLaMA-2 / -3 by its config
        T.template_for(config)


# model config -> template name (None: error), exactly what the if-chains decided before the registry
CONFIG_TEMPLATES = [
    ({"model_type": "llama", "vocab_size": 32000}, "llama2"),
    ({"model_type": "llama", "vocab_size": 128256}, "llama3"),
    ({"model_type": "llama", "vocab_size": 128000}, "llama3"),
    ({"model_type": "llama", "vocab_size": 49152}, None),
    ({"model_type": "llama"}, None),
    ({"model_type": "mistral"}, "mistral"),
    ({"model_type": "mistral", "vocab_size": 32000}, "mistral"),
    ({"model_type": "mistral", "vocab_size": 32768}, "mistral_v3"),
    ({"model_type": "mixtral", "vocab_size": 32768}, "mistral_v3"),
    ({"model_type": "mixtral", "vocab_size": 32000}, "mistral"),
    ({"model_type": "qwen2"}, "chatml"),
    ({"model_type": "qwen2_moe"}, "chatml"),
    ({"model_type": "qwen3", "vocab_size": 151936}, "chatml"),
    ({"model_type": "gemma"}, None),
    ({"model_type": "gpt2"}, None),
    ({"model_type": "llava", "text_config": {"model_type": "llama", "vocab_size": 32000}}, "llama2"),
    ({"model_type": "emollm", "text_config": {"model_type": "qwen2"}}, "chatml"),
    ({"model_type": "llama", "vocab_size": 32000, "text_config": {"model_type": "qwen2"}}, "llama2"),
]


@pytest.mark.parametrize(("config", "expected"), CONFIG_TEMPLATES)
def test_template_from_a_model_config(config, expected):
    if expected is None:
        with pytest.raises(EmollmError, match="cannot tell") as err:
            T.template_for(config)
        assert "model.backbone.template" in err.value.hint
    else:
        assert T.template_for(config).name == expected


class _Config:
    def __init__(self, model_type):
        self.model_type = model_type


@pytest.mark.parametrize(("model_type", "expected"), [
    *[(t, ALL_PROJ) for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "mixtral")],
    ("gpt2", ["c_attn", "c_proj", "c_fc"]),
    *[(t, ATTN) for t in ("qwen2_moe", "bert", "phi3", "")],
])  # fmt: skip
def test_lora_targets_per_model_type_as_before(model_type, expected):
    assert default_lora_targets(_Config(model_type)) == expected


@pytest.mark.parametrize(("name_or_path", "expected"), [
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral_v3"),
    ("/ckpt/mistral_7b_v03", "mistral_v3"),
    ("/ckpt/Mistral-7B-Instruct-v0.2", "mistral"),
    ("meta-llama/Llama-2-7b-chat-hf", "llama2"),
    ("/ckpt/llama_2_merged", "llama2"),
    ("/ckpt/llama2-distilled-mistral", "mistral"),  # a name naming both: Mistral, as the old if-chain
    ("/ckpt/llama2-distilled-mistral-v0.3", "mistral_v3"),
    ("/ckpt/my-model", None),
])  # fmt: skip
def test_checkpoint_name_decides_without_chat_template_or_special_tokens(tiny, name_or_path, expected):
    tok = AutoTokenizer.from_pretrained(tiny["mistral"])  # no LLaMA-3 / ChatML special tokens
    tok.chat_template = None
    tok.name_or_path = name_or_path
    if expected is None:
        with pytest.raises(EmollmError, match="cannot tell"):
            T.template_for(tok)
    else:
        assert T.template_for(tok).name == expected


def test_every_family_names_a_registered_template_and_families_of_one_architecture_agree():
    for name in B.list_backbones():
        family = B.get_backbone(name)
        assert family.template is None or family.template in T.list_templates(), name
    with pytest.raises(EmollmError, match="already registered"):
        B.register_backbone(B.BackboneFamily("llama2"))
    with pytest.raises(EmollmError, match="other LoRA targets"):
        B.register_backbone(B.BackboneFamily("odd_llama", model_types=("llama",), lora_targets=("q_proj",)))
    assert "odd_llama" not in B.list_backbones()
    with pytest.raises(EmollmError, match="unknown backbone family 'vicuna'"):
        B.get_backbone("vicuna")


# preset -> the family it trains; tiny_cpu / grpo_tiny_cpu train a test fixture, not a family's recipe
PRESET_FAMILIES = {
    "emotion_llama_llama2": "llama2",
    "emotion_llama_llama3": "llama3",
    "emotion_llama_mistral": "mistral",
    "smollm2_cpu": "smollm2",
}
PAPER_PROMPTS = {"emotion_llama_llama2": "emotion_llama"}  # Emotion-LLaMA's MiniGPT-v2 prompt on LLaMA-2-chat


def _sft_presets() -> dict:
    return {p.stem: p for p in train_configs_dir().glob("*.yaml")
            if p.stem not in ("base", "tiny_cpu") and not p.stem.startswith("grpo_")}


def test_recommended_lr_is_the_presets_lr():
    presets = _sft_presets()
    assert set(presets) == set(PRESET_FAMILIES), "a new preset: add it to PRESET_FAMILIES"
    for stem, family in PRESET_FAMILIES.items():
        cfg = cfglib.load(presets[stem])
        # the family's template, except where a preset reproduces a paper's prompt on that family
        assert cfg.model.backbone.template == PAPER_PROMPTS.get(stem, B.get_backbone(family).template), stem
        assert cfg.train.lr == B.get_backbone(family).recommended_lr, stem


def test_every_backbone_preset_has_a_grpo_recipe_after_its_sft_run():
    """``grpo_<preset>.yaml``: the preset's model, from the run that preset writes, at a lower lr, without
    LoRA dropout (sampling and the reference pass run without it)."""
    grpo_recipes = {p.stem for p in train_configs_dir().glob("grpo_*.yaml")}
    assert grpo_recipes == {f"grpo_{stem}" for stem in [*PRESET_FAMILIES, "tiny_cpu"]}
    for stem in [*PRESET_FAMILIES, "tiny_cpu"]:
        sft, grpo = cfglib.load(stem), cfglib.load(f"grpo_{stem}")
        assert grpo.train.stage == "grpo" and sft.train.stage == 1, stem
        assert grpo.train.init_from == sft.run.output_dir, stem  # the SFT run that preset writes
        assert cfglib.to_dict(grpo)["model"] == cfglib.to_dict(sft)["model"], stem
        assert grpo.train.lr < sft.train.lr and grpo.train.lora.dropout == 0.0, stem
        assert grpo.train.grpo.num_generations >= 4 and set(grpo.train.grpo.rewards) == {"format", "accuracy"}, stem
        assert grpo.run.output_dir != sft.run.output_dir, stem


@pytest.fixture
def testlm():
    """A family and its template registered for one test, removed afterwards."""
    T.register_template(
        "testchat", format_user="<|user|>{content}<|bot|>", format_assistant="{content}", end_token="</s>", bos="none"
    )
    family = B.register_backbone(
        B.BackboneFamily(
            "testlm",
            "testchat",
            chat_marker="<|bot|>",
            model_types=("testlm",),
            config_vocab=lambda v: v == 777,
            lora_targets=("wq", "wv"),
            recommended_lr=3e-4,
        )
    )
    yield family
    B.unregister_backbone("testlm")
    T._TEMPLATES.pop("testchat")


def test_a_registered_family_is_detected_and_used_end_to_end(tiny, testlm):
    tok = copy.deepcopy(AutoTokenizer.from_pretrained(tiny["llama2"]))
    tok.chat_template = "{% for m in messages %}<|user|>{{ m.content }}<|bot|>{% endfor %}"
    template = T.template_for(tok)
    assert template.name == "testchat" and T.resolve_template(None, tok) is template
    assert T.render_conversation(template, [{"role": "user", "content": "hi"}]).endswith("<|user|>hi<|bot|>")
    assert T.template_for({"model_type": "testlm", "vocab_size": 777}).name == "testchat"
    assert default_lora_targets(_Config("testlm")) == ["wq", "wv"]
