"""Model + processor from an emollm config (the ``model`` section), and back from a run dir."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from emollm.config import EmollmConfig, ModelConfig
from emollm.dataset.aus import MERR_AUS
from emollm.errors import EmollmError
from emollm.log import get_logger
from emollm.modeling import quantization
from emollm.modeling.modeling_emollm import EmoLLMForConditionalGeneration
from emollm.processing import EmoProcessor, ModalitySpan

log = get_logger(__name__)

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def modality_specs(model_cfg: ModelConfig) -> dict[str, dict[str, Any]]:
    """``EmoLLMConfig.modalities`` from the config's encoder entries.

    A frozen encoder's ``feature_dim`` comes from its checkpoint config when not given; its
    ``num_input_tokens`` (feature rows per clip), when not given, is asked from the loaded encoder.
    """
    from emollm.modeling.encoders import build_encoder, feature_dim_of

    specs: dict[str, dict[str, Any]] = {}
    for name, enc in model_cfg.encoders.items():
        spec: dict[str, Any] = {
            "kind": enc.modality,
            "projector": enc.projector or model_cfg.projector,
            "projector_options": dict(enc.projector_options),
            "span_prefix": enc.span_prefix,
            "span_suffix": enc.span_suffix,
        }
        if enc.span_tail:
            spec["span_tail"], spec["span_tail_tokens"] = enc.span_tail, enc.span_tail_tokens
        if enc.modality == "au":
            spec["au_encoder"] = dict(enc.options)
            spec["feature_dim"] = 2 * int(enc.options.get("num_aus", len(MERR_AUS)))
        else:
            spec["encoder"] = {"name_or_path": enc.name_or_path, **enc.options}
            spec["feature_dim"] = enc.feature_dim or feature_dim_of(enc.modality, enc.name_or_path, **enc.options)
            if enc.num_input_tokens is None:
                spec["num_input_tokens"] = build_encoder(enc.modality, enc.name_or_path, **enc.options).num_tokens()
            else:
                spec["num_input_tokens"] = enc.num_input_tokens
        specs[name] = spec
    return specs


def processor_for(model: EmoLLMForConditionalGeneration, tokenizer: Any, template: str | None, *,
                  max_length: int | None = None, truncation: str = "error") -> EmoProcessor:
    """The processor whose spans match ``model`` (token counts, prefixes); sets the model's media token ids."""
    spans = [
        ModalitySpan(name, model.num_media_tokens(name), spec.get("span_prefix", ""), spec.get("span_suffix", ""),
                     tail=spec.get("span_tail"), tail_tokens=int(spec.get("span_tail_tokens", 0)) if spec.get("span_tail") else 0)
        for name, spec in model.config.modalities.items()
    ]
    processor = EmoProcessor(tokenizer, template, spans, max_length=max_length,
                             missing_modality=model.config.missing_modality, truncation=truncation)  # type: ignore[arg-type]
    model.config.media_token_ids = dict(processor.media_token_ids)
    model.config.template = processor.template.name
    return processor


def build_model_and_processor(cfg: EmollmConfig) -> tuple[EmoLLMForConditionalGeneration, EmoProcessor]:
    """A fresh model (pretrained backbone, new media modules) and its processor, from the config.

    ``train.quantization`` 4bit / 8bit loads the backbone through bitsandbytes (QLoRA); the model's
    config records how, so :func:`load_run` quantises it again.
    """
    from transformers import AutoTokenizer

    backbone = cfg.model.backbone
    if not backbone.name_or_path:
        raise EmollmError("model.backbone.name_or_path is empty", hint="set it to a checkpoint path or hub id")
    load_kwargs: dict[str, Any] = {"revision": backbone.revision, "attn_implementation": backbone.attn_implementation}
    if backbone.trust_remote_code:
        load_kwargs["trust_remote_code"] = True
    if backbone.torch_dtype != "auto":
        import torch

        load_kwargs["dtype"] = getattr(torch, _DTYPES[backbone.torch_dtype])
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone.name_or_path, revision=backbone.revision,
                                                  trust_remote_code=backbone.trust_remote_code)
    except OSError as exc:
        raise EmollmError(f"cannot load the tokenizer of '{backbone.name_or_path}': {exc}") from None
    fusion = {"depth": cfg.model.fusion.depth, "num_heads": cfg.model.fusion.num_heads} if cfg.model.fusion.depth else None
    model = EmoLLMForConditionalGeneration.from_backbone(
        backbone.name_or_path,
        modality_specs(cfg.model),
        prompt_tokens=cfg.model.prompt_tokens,
        fusion=fusion,
        missing_modality=cfg.model.missing_modality,
        quantization=quantization.settings_from_config(cfg),  # train.quantization: QLoRA's 4-bit / 8-bit backbone
        **load_kwargs,
    )
    processor = processor_for(model, tokenizer, backbone.template, max_length=cfg.train.max_length)
    return model, processor


def save_run(model: EmoLLMForConditionalGeneration, processor: EmoProcessor, run_dir: str | os.PathLike) -> Path:
    """Model (full weights, or adapter + media modules under LoRA) and processor in one directory."""
    out = Path(run_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_run(run_dir: str | os.PathLike, **kwargs: Any) -> tuple[EmoLLMForConditionalGeneration, EmoProcessor]:
    """What :func:`save_run` wrote: the model (backbone + adapter + media modules) and its processor."""
    from emollm import safe_load

    path = Path(run_dir)
    if not (path / "config.json").is_file():
        raise EmollmError(f"{path} is not an emollm run dir (no config.json)")
    # A run dir or export may come from anyone: whole files, and no pickle naming code, before loading.
    # (transformers / peft read .bin weights with weights_only=True; this also names a damaged file.)
    safe_load.vet(path, skip=("checkpoint-*", "logs"))
    processor = EmoProcessor.from_pretrained(path)
    model = EmoLLMForConditionalGeneration.from_pretrained(path, **kwargs)
    if model.config.media_token_ids != processor.media_token_ids:
        raise EmollmError(f"{path}: model and processor disagree on the media token ids")
    return model, processor
