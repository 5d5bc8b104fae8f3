"""``EmoLLMForConditionalGeneration``: media features projected into a swappable causal LM.

Composition, as HF's LLaVA: the backbone (any ``AutoModelForCausalLM``) lives inside; one projector
per modality (plus the learned AU encoder, modality prompt tokens and cross-modal fusion) turns
features into embeddings; the processor has already expanded every ``<name>`` placeholder into ``N``
media tokens ``<|emo_name|>``, and :meth:`merge_media` writes the projected rows into those
positions with ``masked_scatter`` after checking the counts.

Media token ids are never looked up in the backbone's embedding table (they are swapped for id 0
first) and never predicted (labels there are -100), so adding them to the tokenizer needs no
``resize_token_embeddings``: a LoRA run's whole delta is the adapter plus the media modules.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from emollm.errors import EmollmError, MediaTokenMismatchError
from emollm.modeling.backbones import lora_targets
from emollm.modeling.configuration import EmoLLMConfig

MEDIA_WEIGHTS_NAME = "media_modules.safetensors"
ADAPTER_DIR = "adapter"
MEDIA_KWARGS = ("media", "media_present", "media_masks")
#: What the installed transformers calls the KV cache in ``generate`` and the backbones' ``forward``:
#: ``cache`` in newer 5.x, ``past_key_values`` in older 5.x (there it is not yet deprecated).
CACHE_KWARG = "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters else "past_key_values"


class EmoLLMPreTrainedModel(PreTrainedModel):
    config_class = EmoLLMConfig
    base_model_prefix = "emollm"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _skip_keys_device_placement = [CACHE_KWARG]

    def _init_weights(self, module: nn.Module) -> None:
        # The backbone initialises itself; the media modules initialise in their constructors.
        pass


class EmoLLMForConditionalGeneration(EmoLLMPreTrainedModel, GenerationMixin):
    def __init__(self, config: EmoLLMConfig, language_model: PreTrainedModel | None = None):
        super().__init__(config)
        from emollm.modeling.media import build_media_modules

        self.language_model = language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        self.media = build_media_modules(config)
        self.post_init()

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        backbone: str | os.PathLike | PreTrainedModel,
        modalities: dict[str, dict],
        *,
        prompt_tokens: int = 0,
        fusion: dict | None = None,
        missing_modality: str = "zero",
        media_token_ids: dict[str, int] | None = None,
        template: str | None = None,
        quantization: dict | None = None,
        **backbone_kwargs: Any,
    ) -> EmoLLMForConditionalGeneration:
        """Wrap a pretrained causal LM (a path, hub id or loaded model) with fresh media modules.

        ``quantization`` (:mod:`emollm.modeling.quantization` settings) loads the backbone 4-bit or
        8-bit with bitsandbytes (QLoRA); the media modules then stay float32.
        """
        if isinstance(backbone, PreTrainedModel):
            if quantization:
                raise EmollmError("quantization applies when emollm loads the backbone: pass a path or hub id")
            language_model = backbone
            name_or_path = getattr(backbone.config, "_name_or_path", None)
        else:
            name_or_path = str(backbone)
            language_model = _load_backbone(name_or_path, quantization, backbone_kwargs)
        config = EmoLLMConfig(
            text_config=language_model.config,
            modalities=modalities,
            prompt_tokens=prompt_tokens,
            fusion=fusion,
            missing_modality=missing_modality,
            media_token_ids=media_token_ids or {},
            backbone_name_or_path=name_or_path,
            template=template,
            quantization=dict(quantization) if quantization else None,
            # the composite config re-sets its sub-configs' attention backend: keep the backbone's
            attn_implementation=language_model.config._attn_implementation,
        )
        model = cls(config, language_model=language_model)
        model.media.to(dtype=model.media_dtype)
        return model

    @property
    def media_dtype(self) -> torch.dtype:
        """The media modules' dtype: the backbone's, except under QLoRA (float32: they train in full)."""
        return torch.float32 if self.config.quantization else self.language_model.dtype

    # ------------------------------------------------------------------------------ HF plumbing
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_decoder(self):
        return self.language_model.get_decoder()

    @property
    def is_lora(self) -> bool:
        return hasattr(self.language_model, "peft_config")

    @property
    def is_quantized(self) -> bool:
        """Whether the backbone was loaded 4-bit / 8-bit by bitsandbytes (QLoRA)."""
        return bool(self.config.quantization)

    def num_media_tokens(self, name: str) -> int:
        """Media tokens per clip for modality ``name`` (the processor expands placeholders to this)."""
        return self.media.num_tokens(name)

    # ------------------------------------------------------------------------------ media merge
    def merge_media(
        self,
        input_ids: torch.LongTensor,
        inputs_embeds: torch.Tensor,
        media: dict[str, torch.Tensor] | None,
        media_present: dict[str, torch.Tensor] | None,
        media_masks: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Replace media-token positions of ``inputs_embeds`` by the projected features."""
        media = media or {}
        batch = input_ids.shape[0]
        present = {}
        for name in self.config.modalities:
            given = (media_present or {}).get(name)
            if given is None:
                given = torch.full((batch,), name in media, dtype=torch.bool, device=input_ids.device)
            present[name] = given.to(input_ids.device).bool()
        projected = self.media(media, present, media_masks, batch_size=batch)  # every module runs (ZeRO-3: no rank skips one)
        spans = {name: input_ids == self.config.media_token_ids[name] for name in projected
                 if self.config.media_token_ids.get(name) is not None}
        # every modality's per-row token count in one device read (the checks below are plain Python)
        counts = dict(zip(spans, torch.stack([m.sum(dim=1) for m in spans.values()]).tolist(), strict=True)) if spans else {}
        merged, unused = None, []
        for name, rows in projected.items():
            per_row, n = counts.get(name, [0] * batch), rows.shape[1]
            bad = [row for row, count in enumerate(per_row) if count not in (0, n)]
            if bad:
                raise MediaTokenMismatchError(
                    f"modality '{name}': row {bad[0]} has {per_row[bad[0]]} media tokens but the projector gives "
                    f"{n} rows per clip"
                )
            with_tokens = [row for row, count in enumerate(per_row) if count]
            if not with_tokens:
                unused.append(rows)
                continue
            declared_absent = media_present is not None and name in media_present
            if name not in media and (not declared_absent or bool(present[name][with_tokens].any())):
                # Tokens with no features are only fine for rows declared absent (missing_modality "zero").
                raise MediaTokenMismatchError(
                    f"modality '{name}': {len(with_tokens)} row(s) hold its media tokens but no '{name}' features were given"
                )
            source = (rows if len(with_tokens) == batch else rows[with_tokens]).reshape(-1, rows.shape[-1])
            source = source.to(inputs_embeds.dtype)
            if merged is None:  # one copy of the embeddings; later modalities write into it in place
                merged = inputs_embeds.masked_scatter(spans[name].unsqueeze(-1), source)
            else:
                merged.masked_scatter_(spans[name].unsqueeze(-1), source)
        merged = inputs_embeds if merged is None else merged
        if unused:
            # Modalities with no token in the batch still reach the loss, with weight 0: every media
            # parameter gets a (zero) gradient on every step (DDP / ZeRO-3 need the same graph on all ranks).
            merged = merged + (sum(rows.sum() for rows in unused) * 0.0).to(merged.dtype)
        return merged

    def _media_token_mask(self, input_ids: torch.LongTensor) -> torch.Tensor:
        ids = list(self.config.media_token_ids.values())
        if not ids:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))

    def embed(
        self,
        input_ids: torch.LongTensor,
        media: dict[str, torch.Tensor] | None = None,
        media_present: dict[str, torch.Tensor] | None = None,
        media_masks: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Token embeddings with media merged (media token ids never reach the embedding table)."""
        is_media = self._media_token_mask(input_ids)
        safe_ids = input_ids.masked_fill(is_media | (input_ids >= self.get_input_embeddings().num_embeddings), 0)
        embeds = self.get_input_embeddings()(safe_ids)
        # In training the media modules run on every step, media or not (ZeRO-3: no rank may skip them).
        if self.config.modalities and (self.training or media is not None or bool(is_media.any())):
            embeds = self.merge_media(input_ids, embeds, media, media_present, media_masks)
        return embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        media: dict[str, torch.Tensor] | None = None,
        media_present: dict[str, torch.Tensor] | None = None,
        media_masks: dict[str, torch.Tensor] | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values=None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """The backbone's forward on the media-merged embeddings.

        ``cache`` is the KV cache (``generate`` passes it); ``past_key_values``, its older name, is
        taken too. Either reaches the backbone under the name the installed transformers uses
        (:data:`CACHE_KWARG`), so no deprecated keyword is ever sent.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, media, media_present, media_masks)
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            kwargs[CACHE_KWARG] = cache
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False,
                                      input_ids: torch.LongTensor | None = None, **model_kwargs: Any):
        """Beams / ``num_return_sequences``: HF repeats top-level tensors only; the per-modality dicts
        (``media``, ``media_present``, ``media_masks``, batch first) are repeated here the same way,
        each row ``expand_size`` times in place (``repeat_interleave``), as ``input_ids``."""
        nested = {key: model_kwargs.pop(key) for key in MEDIA_KWARGS if isinstance(model_kwargs.get(key), dict)}
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        for key, values in nested.items():
            model_kwargs[key] = {
                name: value.repeat_interleave(expand_size, dim=0) if isinstance(value, torch.Tensor) and expand_size != 1 else value
                for name, value in values.items()
            }
        return input_ids, model_kwargs

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in MEDIA_KWARGS:  # media is merged into the KV cache at prefill; later steps see new tokens only
                inputs.pop(key, None)
        return inputs

    # ------------------------------------------------------------------------------ live encoders
    def load_encoders(self, names: list[str] | None = None) -> dict[str, Any]:
        """Load the frozen encoders named in the config (``modalities[name]["encoder"]``) for live use.

        They are held outside the module tree (never trained, never saved with the model); training
        reads the feature cache instead. Returns ``{name: FrozenEncoder}``.
        """
        from emollm.modeling.encoders import build_encoder

        live = self.__dict__.setdefault("_live_encoders", {})
        for name, spec in self.config.modalities.items():
            if (names is not None and name not in names) or spec["kind"] == "au" or name in live:
                continue
            encoder = dict(spec.get("encoder") or {})
            if not encoder.get("name_or_path"):
                raise EmollmError(f"modality '{name}' names no encoder checkpoint: it can only read cached features")
            live[name] = build_encoder(spec["kind"], encoder.pop("name_or_path"), **encoder)
        return dict(live)

    def encode_media(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Raw clip inputs per modality (frames / face crops / 16 kHz audio) -> features ``(1, T, D)``.

        Modalities missing from ``inputs`` are left out (the processor drops or zeroes their span).
        """
        live = self.load_encoders([name for name in inputs if name in self.config.modalities])
        out = {}
        for name, raw in inputs.items():
            spec = self.config.modalities.get(name)
            if spec is None:
                raise EmollmError(f"'{name}' is not a modality of this model (it has {', '.join(self.config.modalities)})")
            if spec["kind"] == "au":
                out[name] = torch.as_tensor(raw, dtype=torch.float32).unsqueeze(0)
                continue
            features = live[name].extract(raw)
            expected = (spec["num_input_tokens"], spec["feature_dim"])
            if tuple(features.shape) != expected:
                raise MediaTokenMismatchError(
                    f"modality '{name}': the encoder gave features of shape {tuple(features.shape)}, "
                    f"the model was built for {expected}"
                )
            out[name] = features.unsqueeze(0)
        return out

    # ------------------------------------------------------------------------------ LoRA
    def add_lora(
        self,
        *,
        r: int = 64,
        alpha: int = 16,
        dropout: float = 0.05,
        target_modules: list[str] | None = None,
    ) -> None:
        """Wrap the backbone with a peft LoRA adapter; the media modules stay fully trainable.

        A quantised backbone (QLoRA) is first prepared by :meth:`prepare_for_kbit_training`.
        """
        from peft import LoraConfig, get_peft_model

        if self.is_lora:
            raise EmollmError("this model already has a LoRA adapter")
        if self.is_quantized:
            self.prepare_for_kbit_training()
        lora = LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=target_modules or default_lora_targets(self.config.text_config),
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.language_model = get_peft_model(self.language_model, lora)
        for p in self.media.parameters():
            p.requires_grad_(True)

    def set_lora_dropout(self, p: float) -> int:
        """Set the dropout before every LoRA layer of the adapter (a training setting, not part of the
        adapter's weights: a run started from another keeps its adapter but trains with its own dropout).
        Returns the number of layers set."""
        import torch.nn as nn

        if not self.is_lora:
            raise EmollmError("this model has no LoRA adapter")
        n = 0
        for module in self.language_model.modules():
            dropouts = getattr(module, "lora_dropout", None)
            if isinstance(dropouts, nn.ModuleDict):
                for name in list(dropouts):  # peft puts an Identity where the dropout is 0
                    dropouts[name] = nn.Dropout(p) if p > 0 else nn.Identity()
                    n += 1
        for config in getattr(self.language_model, "peft_config", {}).values():
            config.lora_dropout = p  # what a run saved from here records
        return n

    def prepare_for_kbit_training(self) -> None:
        """QLoRA: ``peft.prepare_model_for_kbit_training`` on the quantised backbone (every backbone
        weight frozen, its remaining fp16 / bf16 weights (norms, embeddings, LM head) cast to float32 for
        stable training). Gradient checkpointing is left to the caller (``train.gradient_checkpointing``,
        non-reentrant); LoRA weights, if any, are frozen too: re-enable what should train."""
        from peft import prepare_model_for_kbit_training

        if not self.is_quantized:
            raise EmollmError("prepare_for_kbit_training: the backbone is not quantised")
        prepare_model_for_kbit_training(self.language_model, use_gradient_checkpointing=False)

    def trainable_parameters_by_group(self) -> dict[str, int]:
        groups = {"backbone": 0, "lora": 0, "media": 0}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            key = "media" if name.startswith("media.") else "lora" if "lora_" in name else "backbone"
            groups[key] += p.numel()
        return groups

    # ------------------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Full weights without LoRA (as HF); with LoRA: config + adapter + media modules only.

        A LoRA run dir does not copy the backbone: ``config.backbone_name_or_path`` points at it and
        :meth:`from_pretrained` loads it from there, then the adapter, then the media modules.
        """
        if not self.is_lora:
            super().save_pretrained(save_directory, **kwargs)
            return
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        if not self.config.backbone_name_or_path:
            raise EmollmError("cannot save a LoRA run without config.backbone_name_or_path (where the base model lives)")
        self.config.save_pretrained(out)
        self.language_model.save_pretrained(out / ADAPTER_DIR)
        state = {k: v.detach().contiguous().cpu() for k, v in self.media.state_dict().items()}
        save_file(state, str(out / MEDIA_WEIGHTS_NAME), metadata={"format": "pt"})
        (out / "emollm_run.json").write_text(json.dumps({"kind": "lora", "adapter": ADAPTER_DIR}, indent=2))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        path = Path(pretrained_model_name_or_path)
        if not (path / ADAPTER_DIR / "adapter_config.json").is_file():
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
            if path.is_dir():  # an export's encoders/<name>: relative to the directory, wherever it now is
                (loaded[0] if isinstance(loaded, tuple) else loaded).config.resolve_local_paths(path)
            return loaded
        from peft import PeftModel
        from safetensors.torch import load_file

        config = EmoLLMConfig.from_pretrained(path)
        config.resolve_local_paths(path)  # an export's backbone/ and encoders/<name>
        backbone_kwargs = {k: kwargs[k] for k in ("dtype", "torch_dtype", "attn_implementation", "device_map", "revision") if k in kwargs}
        base = _load_backbone(config.backbone_name_or_path, config.quantization, backbone_kwargs)  # QLoRA: quantised again
        # The adapter goes on after construction: PreTrainedModel's init would overwrite loaded LoRA weights.
        model = cls(config, language_model=base)
        model.language_model = PeftModel.from_pretrained(
            base, path / ADAPTER_DIR, is_trainable=kwargs.get("is_trainable", False)
        )
        missing, unexpected = model.media.load_state_dict(load_file(str(path / MEDIA_WEIGHTS_NAME)), strict=True)
        model.media.to(dtype=model.media_dtype)
        return model.eval()


def _load_backbone(name_or_path: str | None, quantization: dict | None, kwargs: dict[str, Any]) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained``; with ``quantization``, through bitsandbytes onto one
    device (this process's GPU, else the CPU, unless ``device_map`` is given)."""
    if quantization:
        from emollm.modeling import quantization as q

        q.validate_settings(quantization)
        q.check_backend("quantization", q.describe(quantization))
        q.quiet_int8_cast_warning()
        kwargs = {**kwargs, "quantization_config": q.bnb_config(quantization)}
        kwargs.setdefault("device_map", q.default_device_map())
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        q.keep_cpu_path_where_unpackable(model)
        return model
    return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)


def default_lora_targets(text_config) -> list[str]:
    """LoRA target modules of the backbone's family (:mod:`emollm.modeling.backbones`)."""
    return lora_targets(text_config)
