"""``EmoLLMConfig``: the backbone's ``text_config`` plus one entry per modality and the projector spec."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from emollm.processing import media_token  # noqa: F401  (re-exported: one home, the processor)

MISSING_MODALITY_POLICIES = ("drop", "zero")


def resolve_local_path(directory: str | os.PathLike, value: Any) -> Any:
    """``value`` made absolute when it is a relative path that exists under ``directory``; anything
    else (hub ids, absolute paths, paths meant relative to the working directory) as it is.

    The one rule by which an exported model's relative names (``backbone``, ``encoders/<name>``) are
    found, in its ``config.json`` (:meth:`EmoLLMConfig.resolve_local_paths`) and its ``config.yaml``
    (:func:`emollm.inference.run_config`).
    """
    if not isinstance(value, str) or not value or os.path.isabs(value) or value.startswith("~"):
        return value
    candidate = Path(directory) / value
    return str(candidate.resolve()) if candidate.exists() else value


class EmoLLMConfig(PreTrainedConfig):
    r"""Configuration of :class:`~emollm.modeling.EmoLLMForConditionalGeneration`.

    ``modalities`` maps a modality name (its placeholder is ``<name>``) to a plain dict:

    - ``kind``: encoder kind (``visual`` | ``face`` | ``video`` | ``audio`` | ``au``);
    - ``feature_dim``: width of one feature row (for ``au``: ``2 * num_aus``);
    - ``num_input_tokens``: feature rows per clip given to the projector (for ``au``: frames, padded);
    - ``projector``: projector name (``linear`` | ``mlp2x_gelu`` | …) and ``projector_options``;
    - ``encoder``: optional ``{"name_or_path": ..., **options}`` of the frozen encoder that made the
      features (the feature cache and live inference use it; the model does not need it to train);
    - ``au_encoder``: for ``au``, the learned AU encoder's options (``num_tokens``, ``depth``, …);
    - ``span_prefix`` / ``span_suffix``: text the processor writes around the media tokens;
      ``span_tail`` / ``span_tail_tokens`` (optional): a second placeholder holding the last media tokens.

    ``prompt_tokens`` learned tokens are prepended to every modality's span; ``fusion`` (``{"depth":
    …, "num_heads": …}`` or None) mixes the modality tokens before they enter the LLM.
    ``quantization`` (None, ``{"bits": 8}`` or ``{"bits": 4, "quant_type": "nf4", "double_quant": …,
    "compute_dtype": …}``) says that the backbone is loaded by bitsandbytes (QLoRA): a saved run loads
    it quantised again.
    """

    model_type = "emollm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: Any = None
    modalities: dict | None = None
    prompt_tokens: int = 0
    fusion: dict | None = None
    missing_modality: str = "zero"
    media_token_ids: dict | None = None
    backbone_name_or_path: str | None = None
    template: str | None = None
    quantization: dict | None = None  # QLoRA: how the backbone is loaded (emollm.modeling.quantization)
    modality_order: list | None = None  # the order of `modalities` (config.json sorts dict keys): restored on load
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.modalities = {str(k): dict(v) for k, v in (self.modalities or {}).items()}
        # Prompts list the modalities in this order and fusion concatenates them in it: a saved config
        # (whose JSON has sorted keys) must come back in the order it was built with.
        order = [str(n) for n in (self.modality_order or []) if str(n) in self.modalities]
        self.modalities = {n: self.modalities[n] for n in [*order, *(n for n in self.modalities if n not in order)]}
        self.modality_order = list(self.modalities)
        self.media_token_ids = {str(k): int(v) for k, v in (self.media_token_ids or {}).items()}
        if self.missing_modality not in MISSING_MODALITY_POLICIES:
            raise ValueError(f"missing_modality must be one of {MISSING_MODALITY_POLICIES}, got {self.missing_modality!r}")
        for name, spec in self.modalities.items():
            for key in ("kind", "feature_dim"):
                if key not in spec:
                    raise ValueError(f"modality '{name}' lacks '{key}'")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["modality_order"] = list(self.modalities)  # kept in step when modalities changed after init
        return out

    def resolve_local_paths(self, directory: str | os.PathLike) -> None:
        """Make checkpoint paths that are relative to ``directory`` absolute, in place.

        An exported model (``emollm export --model``) names its own copies relatively —
        ``backbone_name_or_path: backbone``, encoders ``encoders/<name>`` — so the directory can be
        moved or renamed; the loader resolves them against wherever it now lies. Only a relative path
        that exists under ``directory`` is rewritten: hub ids and paths meant relative to the working
        directory (older run dirs) are left as they are.
        """
        self.backbone_name_or_path = resolve_local_path(directory, self.backbone_name_or_path)
        for spec in self.modalities.values():
            encoder = spec.get("encoder")
            if isinstance(encoder, dict) and "name_or_path" in encoder:
                encoder["name_or_path"] = resolve_local_path(directory, encoder["name_or_path"])

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size
