"""The backbone-family registry: one small table per LLM family, the one home of what emollm decides per family.

A :class:`BackboneFamily` says how to recognise a backbone (its tokenizer's chat template, its special
tokens, its checkpoint name, its model config's ``model_type`` and vocabulary size), which chat template it
uses (by name: the layouts themselves are data in :mod:`emollm.templates`), which modules LoRA targets,
and the learning rate the shipped presets train it at. The template guesser
(:func:`emollm.templates.template_for`) and :func:`lora_targets` (what
``EmoLLMForConditionalGeneration.add_lora`` uses when ``train.lora.target_modules`` is null) only read
this registry. Adding a family is one :func:`register_backbone` call (see docs/templates.md).

Detection walks the families **in registration order**, one clue at a time, first match wins:

1. the tokenizer's ``chat_template`` contains the family's ``chat_marker`` and passes its
   ``chat_check`` (a template holding some family's marker that no family accepts is a layout emollm
   does not register: no guess from the checkpoint name then, the caller asks the user to choose);
2. no chat template verdict: all of the family's ``vocab_tokens`` are in the tokenizer's vocabulary;
3. then the checkpoint name (lowercased, ``-`` and ``_`` removed) matches ``name_pattern``;
4. from a model config: ``model_type`` is one of ``model_types`` and ``config_vocab`` accepts its
   ``vocab_size`` (a wrapper config with a ``text_config``, e.g. a multimodal one, is read through
   its text config unless its own ``model_type`` is detectable).

This module imports nothing of emollm's but the errors, so the light :mod:`emollm.templates` can read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from emollm.errors import EmollmError

#: LoRA targets of a backbone whose ``model_type`` no family lists: the attention projections.
DEFAULT_LORA_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
#: All attention and MLP projections (QLoRA-paper style) of the LLaMA-like architectures.
ALL_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class BackboneFamily:
    """One backbone family. Only ``name`` is required; every clue left empty is simply not used."""

    name: str
    template: str | None = None  # a registered template name (emollm.templates); None: the user sets it
    chat_marker: str | None = None  # text in the tokenizer's chat_template that claims it for this family
    chat_check: Callable[[str], bool] | None = None  # further test of a claimed chat_template (None: claimed is enough)
    vocab_tokens: tuple[str, ...] = ()  # special tokens that together mark the family's tokenizer
    name_pattern: str | None = None  # regex searched in the checkpoint name (lowercase, no '-' / '_')
    model_types: tuple[str, ...] = ()  # config.model_type values of its architecture (also picks lora_targets)
    config_vocab: Callable[[Any], bool] | None = None  # vocab_size test telling it apart; None: no guess from a config
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    recommended_lr: float | None = None  # train.lr of the shipped presets for it (None: no preset; default 2e-4)
    description: str = ""


_FAMILIES: dict[str, BackboneFamily] = {}


def register_backbone(family: BackboneFamily, *, overwrite: bool = False) -> BackboneFamily:
    """Add ``family`` at the end of the detection order (``overwrite`` replaces one in place)."""
    if family.name in _FAMILIES and not overwrite:
        raise EmollmError(
            f"backbone family {family.name!r} is already registered", hint="pass overwrite=True to replace it"
        )
    for other in _FAMILIES.values():
        shared = set(other.model_types) & set(family.model_types)
        # LoRA targets are looked up by model_type alone: families of one architecture must agree
        if other.name != family.name and shared and other.lora_targets != family.lora_targets:
            raise EmollmError(
                f"backbone family {family.name!r}: model_type {sorted(shared)[0]!r} is also family "
                f"{other.name!r}'s, with other LoRA targets {list(other.lora_targets)}"
            )
    _FAMILIES[family.name] = family
    return family


def unregister_backbone(name: str) -> None:
    _FAMILIES.pop(name, None)


def get_backbone(name: str) -> BackboneFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise EmollmError(f"unknown backbone family {name!r}; registered: {', '.join(_FAMILIES)}") from None


def list_backbones() -> list[str]:
    return list(_FAMILIES)


# -- detection ----------------------------------------------------------------------------------
def family_from_chat_template(chat_template: Any) -> tuple[BackboneFamily | None, bool]:
    """``(family, claimed)``: the first family accepting the template; ``claimed``: some family's marker is
    in it (a claimed template no family accepts is an unregistered layout of a known family)."""
    if isinstance(chat_template, Mapping):  # named templates: the default one
        chat_template = chat_template.get("default") or next(iter(chat_template.values()), None)
    if not isinstance(chat_template, str):
        return None, False
    claimed = False
    for family in _FAMILIES.values():
        if family.chat_marker is None or family.chat_marker not in chat_template:
            continue
        claimed = True
        if family.chat_check is None or family.chat_check(chat_template):
            return family, True
    return None, claimed


def family_from_vocab(tokenizer: Any) -> BackboneFamily | None:
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary view: nothing to guess from
        return None
    for family in _FAMILIES.values():
        if family.vocab_tokens and all(token in vocab for token in family.vocab_tokens):
            return family
    return None


def family_from_name(name_or_path: Any) -> BackboneFamily | None:
    path = str(name_or_path or "").lower().replace("-", "").replace("_", "")
    for family in _FAMILIES.values():
        if family.name_pattern and re.search(family.name_pattern, path):
            return family
    return None


def _config_get(config: Any) -> Callable[..., Any]:
    return config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)


def family_from_config(config: Any) -> BackboneFamily | None:
    """From a model config (object or dict): ``model_type`` + ``vocab_size``, through ``text_config``."""
    get = _config_get(config)
    model_type = get("model_type")
    text_config = get("text_config")
    detectable = {t for f in _FAMILIES.values() if f.config_vocab is not None for t in f.model_types}
    if text_config is not None and model_type not in detectable:
        return family_from_config(text_config)
    for family in _FAMILIES.values():
        if (
            family.config_vocab is not None
            and model_type in family.model_types
            and family.config_vocab(get("vocab_size"))
        ):
            return family
    return None


def lora_targets(text_config: Any) -> list[str]:
    """LoRA target modules of the backbone's architecture (its ``model_type``), or the attention projections."""
    model_type = getattr(text_config, "model_type", "")
    for family in _FAMILIES.values():
        if model_type in family.model_types:
            return list(family.lora_targets)
    return list(DEFAULT_LORA_TARGETS)


# -- the families ---------------------------------------------------------------------------------
def _any_vocab(vocab_size: Any) -> bool:
    return True


# A string literal of the chat template that opens with "[/INST]" (v0.3: ``content + "[/INST]"``) or
# holds " [/INST]" (v0.1/v0.2: ``content + ' [/INST]'``, also their 2024 revision ``' [INST] ' ... ' [/INST]'``).
_INST_CLOSE_GLUED = re.compile(r"""["']\[/INST\]""")
_INST_OPEN_SPACED = re.compile(r"""\[INST\] ["']""")


def _mistral_v1(chat_template: str) -> bool:
    # "[SYSTEM_PROMPT]": Mistral-Small-3's layout, not registered
    return "[SYSTEM_PROMPT]" not in chat_template and " [/INST]" in chat_template


def _mistral_v3(chat_template: str) -> bool:
    # Nemo/tekken's "[INST]" glued to the content is neither version: not registered
    return (
        "[SYSTEM_PROMPT]" not in chat_template
        and " [/INST]" not in chat_template
        and bool(_INST_CLOSE_GLUED.search(chat_template))
        and bool(_INST_OPEN_SPACED.search(chat_template))
    )


for _family in (
    BackboneFamily(
        "llama3",
        "llama3",
        chat_marker="<|start_header_id|>",
        vocab_tokens=("<|start_header_id|>", "<|eot_id|>"),
        model_types=("llama",),
        config_vocab=lambda v: isinstance(v, int) and v >= 128000,
        lora_targets=ALL_PROJECTIONS,
        recommended_lr=1e-4,
        description="LLaMA-3-Instruct",
    ),
    BackboneFamily(
        "smollm2",
        "smollm2",
        chat_marker="<|im_start|>",
        chat_check=lambda t: "named SmolLM" in t,
        model_types=("llama",),  # a LLaMA architecture; its config alone is not told apart from other LLaMAs
        lora_targets=ALL_PROJECTIONS,
        recommended_lr=4e-4,
        description="SmolLM2-Instruct (ChatML, its own system prompt)",
    ),
    BackboneFamily(
        "chatml",
        "chatml",
        chat_marker="<|im_start|>",
        vocab_tokens=("<|im_start|>", "<|im_end|>"),
        model_types=("qwen2", "qwen3"),
        config_vocab=_any_vocab,
        lora_targets=ALL_PROJECTIONS,
        description="Qwen2 / Qwen3 and other ChatML checkpoints",
    ),
    BackboneFamily(
        "qwen2_moe",
        "chatml",
        model_types=("qwen2_moe",),
        config_vocab=_any_vocab,
        description="Qwen2-MoE: ChatML; LoRA on the attention projections only (not the experts)",
    ),
    BackboneFamily(
        "llama2",
        "llama2",
        chat_marker="<<SYS>>",
        name_pattern=r"^(?!.*mistral).*llama2",  # a name naming Mistral too is left to the Mistral families
        model_types=("llama",),
        config_vocab=lambda v: v == 32000,
        lora_targets=ALL_PROJECTIONS,
        recommended_lr=1e-4,
        description="LLaMA-2-chat",
    ),
    BackboneFamily(
        "mistral_v3",
        "mistral_v3",
        chat_marker="[INST]",
        chat_check=_mistral_v3,
        name_pattern=r"^(?=.*mistral).*v0\.?3",
        model_types=("mistral", "mixtral"),
        config_vocab=lambda v: v == 32768,  # v0.3 (and Mixtral-8x22B): 32768
        lora_targets=ALL_PROJECTIONS,
        recommended_lr=1e-4,
        description="Mistral-7B-Instruct v0.3 and later [INST] layouts",
    ),
    BackboneFamily(
        "mistral",
        "mistral",
        chat_marker="[INST]",
        chat_check=_mistral_v1,
        name_pattern=r"mistral",  # after mistral_v3, which takes the names saying v0.3
        model_types=("mistral", "mixtral"),
        config_vocab=lambda v: v != 32768,
        lora_targets=ALL_PROJECTIONS,
        recommended_lr=1e-4,
        description="Mistral-7B-Instruct v0.1 / v0.2",
    ),
    BackboneFamily(
        "gemma",
        model_types=("gemma", "gemma2"),
        lora_targets=ALL_PROJECTIONS,
        description="Gemma: no registered chat template (set model.backbone.template)",
    ),
    BackboneFamily(
        "gpt2",
        model_types=("gpt2",),
        lora_targets=("c_attn", "c_proj", "c_fc"),
        description="GPT-2: fused attention projections; no registered chat template",
    ),
):
    register_backbone(_family)
del _family
