"""The model's media modules: learned AU encoders feeding the per-modality projectors (+ prompts, fusion).

Built from :class:`EmoLLMConfig.modalities` (see its docstring). The ``au`` kind runs the learned
:class:`AUEncoder` first (``(B, frames, 2*num_aus)`` -> ``(B, K, au_hidden)``), whose tokens then go
through that modality's projector like any frozen encoder's features.
"""

from __future__ import annotations

import torch
from torch import nn

from emollm.dataset.aus import MERR_AUS
from emollm.modeling.au_encoder import AU_ENCODER_DEFAULTS, MODEL_AU_NUM_TOKENS, AUEncoder
from emollm.modeling.configuration import EmoLLMConfig
from emollm.modeling.projectors import MediaProjector

# AUEncoder's defaults, but a model's AU modality gets MODEL_AU_NUM_TOKENS tokens unless told otherwise
AU_DEFAULTS = {**AU_ENCODER_DEFAULTS, "num_tokens": MODEL_AU_NUM_TOKENS}


def _au_options(spec: dict) -> dict:
    options = {**AU_DEFAULTS, **spec.get("au_encoder", {})}
    options.setdefault("num_aus", spec["feature_dim"] // 2)
    return options


class MediaModules(nn.Module):
    """``forward(media, present, masks, batch_size) -> {name: (B, num_tokens(name), hidden)}``."""

    def __init__(self, config: EmoLLMConfig):
        super().__init__()
        self.au_encoders = nn.ModuleDict()
        specs = {}
        for name, spec in config.modalities.items():
            projector = {"projector": spec.get("projector", "linear"), **spec.get("projector_options", {})}
            if spec["kind"] == "au":
                options = _au_options(spec)
                self.au_encoders[name] = AUEncoder(**options)
                specs[name] = {"in_dim": options["hidden_size"], "num_input_tokens": options["num_tokens"], **projector}
            else:
                specs[name] = {"in_dim": spec["feature_dim"], "num_input_tokens": spec["num_input_tokens"], **projector}
        self.projector = MediaProjector.from_spec(
            specs, config.text_config.hidden_size, prompt_tokens=config.prompt_tokens, fusion=config.fusion
        )

    def num_tokens(self, name: str) -> int:
        return self.projector.num_tokens(name)

    def forward(
        self,
        media: dict[str, torch.Tensor],
        present: dict[str, torch.Tensor],
        masks: dict[str, torch.Tensor] | None = None,
        *,
        batch_size: int,
    ) -> dict[str, torch.Tensor]:
        features = dict(media)
        for name, encoder in self.au_encoders.items():
            # The AU encoder runs every step even without AU input (ZeRO-3: no rank may skip a module).
            au = media.get(name)
            if au is None:
                weight = encoder.input_proj.weight
                au = weight.new_zeros(batch_size, 1, 2 * encoder.num_aus)
                mask = torch.zeros(batch_size, 1, dtype=torch.bool, device=weight.device)
            else:
                mask = (masks or {}).get(name)
            features[name] = encoder(au.to(encoder.input_proj.weight.dtype), mask)
        return self.projector(features, present, batch_size=batch_size)


def build_media_modules(config: EmoLLMConfig) -> MediaModules:
    return MediaModules(config)


__all__ = ["MERR_AUS", "MediaModules", "build_media_modules"]
