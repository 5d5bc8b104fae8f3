"""A checkpoint in Emotion-LLaMA's released format (MiniGPT-v2's ``{"model": state_dict, "config": ...}``)
with its real key names, at the tiny LLaMA-2's sizes: what `emollm import emotion-llama` is tested on."""

from __future__ import annotations

from pathlib import Path

import torch

from emollm.testing.tiny.encoders import EVA_TINY

# the tiny LLaMA-2 (hidden 64, 2 layers); LoRA r 4, alpha 16; the tiny EVA's width (EVA_TINY: 32; at 56 px,
# 16 patches regrouped 4 -> 1: 4 groups); 8-d face / video / audio features
TINY = {"hidden": 64, "layers": 2, "r": 4, "alpha": 16, "visual": EVA_TINY["hidden"], "groups": 4, "feature": 8}
LORA_KEY = "llama_model.base_model.model.model.layers.{i}.self_attn.{m}_proj.lora_{ab}{default}.weight"


def released_state(seed: int = 0, default: str = "") -> dict[str, torch.Tensor]:
    """Projectors, LoRA on q/v (``default=".default"``: peft >= 0.3 names; "": peft 0.2, Emotion-LLaMA's),
    the rotary buffers and the never-called ``attention`` head that MiniGPT-v2 saves as well."""
    h, r, dv, df = TINY["hidden"], TINY["r"], TINY["visual"], TINY["feature"]
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    state = {"llama_proj.weight": rnd(h, 4 * dv), "llama_proj.bias": rnd(h),
             "cls_tk_llama_proj.weight": rnd(h, dv), "cls_tk_llama_proj.bias": rnd(h)}
    for k in (1, 2, 3):
        state[f"feats_llama_proj{k}.weight"], state[f"feats_llama_proj{k}.bias"] = rnd(h, df), rnd(h)
    for i in range(TINY["layers"]):
        for m in ("q", "v"):
            state[LORA_KEY.format(i=i, m=m, ab="A", default=default)] = rnd(r, h)
            state[LORA_KEY.format(i=i, m=m, ab="B", default=default)] = rnd(h, r)
        state[f"llama_model.base_model.model.model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.rand(8)
    state["attention.fc_att.weight"], state["attention.fc_att.bias"] = rnd(7, 128), rnd(7)
    return state


def save_checkpoint(path: str | Path, state: dict[str, torch.Tensor], alpha: int = TINY["alpha"]) -> Path:
    """``torch.save`` as MiniGPT-v2's runner does: the weights, its config (LoRA settings) and the epoch."""
    torch.save({"model": state, "config": {"model": {"lora_r": TINY["r"], "lora_alpha": alpha}}, "epoch": 3}, path)
    return Path(path)


#: Overrides that fit the preset to these sizes (the video's 1 + 16 tokens; float32 for exact comparisons).
TINY_OVERRIDES = ["model.encoders.video.num_input_tokens=17", "model.backbone.torch_dtype=float32"]
