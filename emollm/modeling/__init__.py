"""The model: emotion encoders projected into a swappable causal LM (see docs/model.md).

- :mod:`.configuration` — ``EmoLLMConfig`` (backbone ``text_config`` + modalities + projector spec)
- :mod:`.modeling_emollm` — ``EmoLLMForConditionalGeneration`` (composition, ``masked_scatter``, LoRA, save/load)
- :mod:`.media` — the media modules (learned AU encoders -> projectors -> prompts -> fusion)
- :mod:`.projectors`, :mod:`.fusion` — projector registry, cross-modal fusion, modality prompt tokens
- :mod:`.encoders`, :mod:`.au_encoder` — frozen encoder registry (feature extraction) and the AU encoder
- :mod:`.backbones` — backbone family registry (detection, chat template, LoRA targets, recommended LR)
- :mod:`.eva_vit` — EVA-CLIP ViT-g (Emotion-LLaMA's global encoder) as a transformers model + converter
"""

from transformers import AutoConfig, AutoModelForCausalLM

from emollm.errors import MediaTokenMismatchError
from emollm.modeling import eva_vit  # noqa: F401  (registers EvaViT with AutoConfig / AutoModel / AutoImageProcessor)
from emollm.modeling.configuration import EmoLLMConfig, media_token
from emollm.modeling.modeling_emollm import EmoLLMForConditionalGeneration, default_lora_targets

# model_type "emollm" -> our classes, so AutoConfig / AutoModelForCausalLM.from_pretrained load a run
# dir or an export once emollm.modeling is imported (no trust_remote_code, no code in the checkpoint).
AutoConfig.register(EmoLLMConfig.model_type, EmoLLMConfig, exist_ok=True)
AutoModelForCausalLM.register(EmoLLMConfig, EmoLLMForConditionalGeneration, exist_ok=True)

__all__ = [
    "EmoLLMConfig",
    "EmoLLMForConditionalGeneration",
    "MediaTokenMismatchError",
    "default_lora_targets",
    "media_token",
]
