"""EVA-CLIP ViT-g (BLIP-2 / MiniGPT-v2 / Emotion-LLaMA's ``eva_vit_g``) as a transformers-native model.

Emotion-LLaMA encodes the peak frame with LAVIS's EVA-CLIP ViT-g/14 at 448 px followed by MiniGPT-v2's
``ln_vision``: 1025 tokens (CLS + 32 x 32 patches) x 1408. transformers has no implementation, so this
module provides one that the ``visual`` encoder kind loads like any hub checkpoint:

>>> convert_eva_vit("eva_vit_g.pth", "models/eva-vit-g-448")       # once: LAVIS weights -> HF dir
>>> enc = build_encoder("visual", "models/eva-vit-g-448", tokens="cls+patch", frames="peak")

- :class:`EvaViTConfig` / :class:`EvaViTModel` — the LAVIS ``VisionTransformer`` math (pre-LN blocks,
  q/v biases with a zero k bias, exact GELU, no final norm, no rel-pos bias, no layer scale) with the
  same parameter names as ``eva_vit_g.pth`` (``blocks.{i}.attn.q_bias`` …), plus ``ln_vision``.
  ``last_hidden_state`` = ``ln_vision(blocks output)``; ``hidden_states`` = the raw embeddings and
  block outputs.
- :class:`EvaViTImageProcessor` — Emotion-LLaMA's preprocessing: PIL ``Resize((S, S), BICUBIC)``, /255,
  CLIP mean/std; no crop.
- :func:`convert_eva_vit` — reads the original checkpoint safely (``weights_only=True``), checks every
  key, interpolates the position embeddings to the new grid as LAVIS does, writes the HF directory.

Importing :mod:`emollm.modeling` registers all three with the Auto classes (no ``trust_remote_code``).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from emollm.errors import CheckpointFileError, ConfigError
from emollm.log import get_logger

log = get_logger(__name__)

#: EVA-CLIP g's head width: its 1408 channels are 16 heads of 88 (``num_heads=1408//88`` in LAVIS).
EVA_HEAD_DIM = 88
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The keys of one LAVIS block and of the model around them (``eva_vit_g.pth``).
BLOCK_KEYS = (
    "norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight", "attn.proj.weight",
    "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
    "mlp.fc2.bias",
)  # fmt: skip
TOP_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias")
LN_VISION_KEYS = ("ln_vision.weight", "ln_vision.bias")
VISUAL_PREFIX = "visual_encoder."  # a full MiniGPT / LAVIS checkpoint nests the ViT under this
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


# ------------------------------------------------------------------------------------------ config
class EvaViTConfig(PreTrainedConfig):
    r"""Configuration of :class:`EvaViTModel`; the defaults are Emotion-LLaMA's EVA-CLIP ViT-g at 448 px.

    ``layer_norm_eps`` is the blocks' LayerNorm eps (1e-6 in EVA); ``ln_vision_eps`` that of MiniGPT's
    ``ln_vision`` (torch's default 1e-5). ``intermediate_size`` is ``int(1408 * 4.3637)`` = 6144.
    """

    model_type = "emollm_eva_vit"

    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1408
    num_hidden_layers: int = 39
    num_attention_heads: int = 16
    intermediate_size: int = 6144
    layer_norm_eps: float = 1e-6
    ln_vision_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid_size(self) -> int:
        """Patches per side (448 / 14 = 32)."""
        return self.image_size // self.patch_size


# ------------------------------------------------------------------------------------------ modules
# Module and parameter names mirror LAVIS's eva_vit.py, so the state dict is the original one.
class EvaViTPatchEmbed(nn.Module):
    def __init__(self, config: EvaViTConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=p, stride=p)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)  # (B, G*G, D), row-major patches


class EvaViTAttention(nn.Module):
    """Fused qkv without bias + separate q / v biases (k has none), as in BEiT / EVA."""

    def __init__(self, config: EvaViTConfig):
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        # SDPA (scale head_dim**-0.5 by default) = LAVIS's softmax(q * scale @ k^T) @ v, without the
        # (B, H, N, N) matrix on GPUs that have a fused kernel (1025 tokens x 39 blocks at 448 px).
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class EvaViTMlp(nn.Module):
    def __init__(self, config: EvaViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = nn.GELU()  # exact (erf) GELU, as LAVIS
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EvaViTBlock(nn.Module):
    def __init__(self, config: EvaViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = EvaViTAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = EvaViTMlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaViTPreTrainedModel(PreTrainedModel):
    config_class = EvaViTConfig
    base_model_prefix = "eva_vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["EvaViTBlock"]  # device_map="auto" keeps a block on one device

    def _init_weights(self, module: nn.Module) -> None:
        # LAVIS's init (trunc-normal 0.02, zero biases, LayerNorm 1/0); only reached for weights a
        # checkpoint does not hold (a freshly built model), since real weights are always converted.
        std = self.config.initializer_range
        if isinstance(module, nn.Linear | nn.Conv2d):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, EvaViTAttention):
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
        elif isinstance(module, EvaViTModel):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.pos_embed, std=std)


class EvaViTModel(EvaViTPreTrainedModel):
    """LAVIS ``VisionTransformer`` (``create_eva_vit_g``) + MiniGPT-v2's ``ln_vision``.

    ``ln_vision`` is a real LayerNorm (weight / bias saved); MiniGPT-v2 builds it fresh (1 / 0) and
    frozen, so in Emotion-LLaMA it is a parameter-free normalisation, and a converted checkpoint
    without ``ln_vision`` weights keeps those defaults.
    """

    def __init__(self, config: EvaViTConfig):
        super().__init__(config)
        d = config.hidden_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.grid_size**2, d))
        self.patch_embed = EvaViTPatchEmbed(config)
        self.blocks = nn.ModuleList([EvaViTBlock(config) for _ in range(config.num_hidden_layers)])
        self.ln_vision = nn.LayerNorm(d, eps=config.ln_vision_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embed

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple:
        """``pixel_values`` (B, 3, S, S) -> ``last_hidden_state`` (B, 1 + G*G, D) after ``ln_vision``,
        ``pooler_output`` its CLS row, ``hidden_states`` (embeddings, block 1, …, block N) raw."""
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        size = self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[-2:]) != (size, size):
            # LAVIS asserts this too: the position embeddings are fixed to one grid
            raise ValueError(f"pixel_values must be (B, {self.config.num_channels}, {size}, {size}), got {tuple(pixel_values.shape)}")
        x = self.patch_embed(pixel_values.to(self.patch_embed.proj.weight.dtype))
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        hidden_states = [x] if output_hidden_states else None
        for block in self.blocks:
            x = block(x)
            if hidden_states is not None:
                hidden_states.append(x)
        last = self.ln_vision(x)
        hidden = tuple(hidden_states) if hidden_states is not None else None
        if not return_dict:
            return tuple(v for v in (last, last[:, 0], hidden) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=last[:, 0], hidden_states=hidden)


# ------------------------------------------------------------------------------------------ processor
class EvaViTImageProcessor(CLIPImageProcessorPil):
    """Emotion-LLaMA's eval transform: ``Resize((S, S), BICUBIC)`` (no aspect keep, no crop), /255,
    CLIP mean / std, RGB.

    A PIL-only processor on purpose: the stock ``CLIPImageProcessor`` resizes with torchvision's
    tensor bicubic when torchvision is installed (no uint8 rounding, its own antialias) and with PIL
    when it is not, so the same ``preprocessor_config.json`` (the part of the encoder fingerprint
    that describes preprocessing) would give different features on different machines. Registered
    with no torchvision class, ``AutoImageProcessor`` always loads this one, whatever is installed.
    """

    size = {"height": 448, "width": 448}
    crop_size = {"height": 448, "width": 448}
    do_center_crop = False
    image_mean = list(CLIP_MEAN)
    image_std = list(CLIP_STD)


def eva_image_processor(image_size: int) -> EvaViTImageProcessor:
    """The processor of a converted ``image_size``-px checkpoint (every setting written out)."""
    return EvaViTImageProcessor(
        do_resize=True, size={"height": image_size, "width": image_size}, resample=3,  # PIL BICUBIC
        do_center_crop=False, crop_size={"height": image_size, "width": image_size}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ registration
AutoConfig.register(EvaViTConfig.model_type, EvaViTConfig, exist_ok=True)
AutoModel.register(EvaViTConfig, EvaViTModel, exist_ok=True)
AutoImageProcessor.register(EvaViTConfig, image_processor_classes={"pil": EvaViTImageProcessor}, exist_ok=True)


# ------------------------------------------------------------------------------------------ conversion
def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """LAVIS ``interpolate_pos_embed``: keep the CLS row, bicubic-resize the patch grid to ``grid``."""
    src = math.isqrt(pos_embed.shape[1] - 1)
    if src == grid:
        return pos_embed
    d = pos_embed.shape[-1]
    patches = pos_embed[:, 1:].reshape(1, src, src, d).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat((pos_embed[:, :1], patches.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)


def _read_checkpoint(src: Path) -> Any:
    """The file's object, loaded with nothing executed (:func:`emollm.safe_load.load_torch_file`)."""
    from emollm.safe_load import load_torch_file

    if not src.is_file():
        raise CheckpointFileError(src, "no such file", hint="give the path of eva_vit_g.pth (LAVIS / BLIP-2)")
    if src.suffix.lower() not in (".pth", ".pt", ".bin", ".safetensors"):
        raise CheckpointFileError(src, f"unknown checkpoint type '{src.suffix}'",
                                  hint="give a .pth / .pt / .bin or .safetensors file")
    return load_torch_file(src)


def _vision_state(obj: Any, src: Path) -> tuple[dict[str, torch.Tensor], int]:
    """(the ViT's keys -> tensors, count of other keys ignored) from any accepted layout."""
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):  # LAVIS / MiniGPT training checkpoints
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointFileError(src, f"holds {type(obj).__name__}, not a state dict of the EVA ViT")
    ignored = 0
    if any(str(k).startswith(VISUAL_PREFIX) for k in obj):
        # a full MiniGPT / BLIP-2 checkpoint: the ViT under visual_encoder., ln_vision beside it
        state = {}
        for key, value in obj.items():
            if key.startswith(VISUAL_PREFIX):
                state[key[len(VISUAL_PREFIX) :]] = value
            elif key in LN_VISION_KEYS:
                state[key] = value
            else:
                ignored += 1
    else:
        state = {str(k): v for k, v in obj.items()}
    bad = sorted(k for k, v in state.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point()))
    if bad:
        raise CheckpointFileError(src, f"not floating-point tensors: {_names(bad)}")
    return state, ignored


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … ({len(keys) - limit} more)" if len(keys) > limit else "")


def _check_keys(state: dict[str, torch.Tensor], src: Path) -> int:
    """Depth of the checkpoint; every block complete, nothing unknown (named in the error otherwise)."""
    unknown, indices = [], set()
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match and match.group(2) in BLOCK_KEYS:
            indices.add(int(match.group(1)))
        elif key not in TOP_KEYS and key not in LN_VISION_KEYS:
            unknown.append(key)
    depth = max(indices) + 1 if indices else 0
    missing = [k for k in TOP_KEYS if k not in state]
    missing += [f"blocks.{i}.{k}" for i in range(depth) for k in BLOCK_KEYS if f"blocks.{i}.{k}" not in state]
    if sum(k in state for k in LN_VISION_KEYS) == 1:
        missing += [k for k in LN_VISION_KEYS if k not in state]
    if depth == 0:
        missing.append("blocks.0.*")
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(sorted(missing))}")
    if unknown:
        problems.append(f"unknown keys: {_names(sorted(unknown))}")
    if problems:
        raise CheckpointFileError(
            src, "not an EVA ViT (LAVIS eva_vit.py) state dict: " + "; ".join(problems),
            hint="give LAVIS's eva_vit_g.pth (BLIP-2), or a MiniGPT / BLIP-2 checkpoint holding visual_encoder.*",
        )  # fmt: skip
    return depth


def _check_shapes(state: dict[str, torch.Tensor], depth: int, src: Path) -> dict[str, int]:
    """Sizes read from the shapes (hidden, patch, channels, mlp width, source grid), all keys checked."""
    weight = state["patch_embed.proj.weight"]
    if weight.dim() != 4 or weight.shape[-1] != weight.shape[-2]:
        raise CheckpointFileError(src, f"patch_embed.proj.weight has shape {tuple(weight.shape)}, not (D, C, p, p)")
    hidden, channels, patch = weight.shape[0], weight.shape[1], weight.shape[-1]
    fc1 = state["blocks.0.mlp.fc1.weight"]
    mlp = fc1.shape[0] if fc1.dim() else 0  # a wrong rank is named by the shape check below
    tokens = state["pos_embed"].shape[1] if state["pos_embed"].dim() == 3 else 0
    grid = math.isqrt(max(tokens - 1, 0))
    if tokens < 2 or grid * grid != tokens - 1:
        raise CheckpointFileError(src, f"pos_embed has shape {tuple(state['pos_embed'].shape)}: not CLS + a square grid")
    d, f = hidden, mlp
    expected = {
        "cls_token": (1, 1, d), "pos_embed": (1, tokens, d), "patch_embed.proj.weight": (d, channels, patch, patch),
        "patch_embed.proj.bias": (d,), **dict.fromkeys(LN_VISION_KEYS, (d,)),
    }  # fmt: skip
    block = {
        "norm1.weight": (d,), "norm1.bias": (d,), "attn.q_bias": (d,), "attn.v_bias": (d,),
        "attn.qkv.weight": (3 * d, d), "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,),
        "norm2.bias": (d,), "mlp.fc1.weight": (f, d), "mlp.fc1.bias": (f,), "mlp.fc2.weight": (d, f),
        "mlp.fc2.bias": (d,),
    }  # fmt: skip
    expected.update({f"blocks.{i}.{k}": shape for i in range(depth) for k, shape in block.items()})
    wrong = [f"{k} {tuple(v.shape)} (expected {expected[k]})" for k, v in state.items() if tuple(v.shape) != expected[k]]
    if wrong:
        raise CheckpointFileError(src, f"shapes do not fit one EVA ViT of width {d}: {_names(wrong)}")
    return {"hidden_size": d, "patch_size": patch, "num_channels": channels, "intermediate_size": f, "grid": grid}


def convert_eva_vit(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_size: int = 448,
    num_heads: int | None = None,
    num_layers: int | None = None,
) -> dict[str, Any]:
    """Convert LAVIS's EVA ViT checkpoint (``eva_vit_g.pth``) into a transformers directory.

    ``src``: a ``.pth`` / ``.pt`` / ``.bin`` (read with ``torch.load(weights_only=True)`` only: a pickle
    that would run code is refused) or ``.safetensors`` file holding a bare state dict, ``{"model":
    sd}``, ``{"state_dict": sd}``, or a full MiniGPT / BLIP-2 checkpoint whose ViT keys start with
    ``visual_encoder.`` (other keys are ignored and counted; ``ln_vision.*`` is kept). Sizes are read
    from the shapes; ``num_heads`` defaults to ``hidden_size // 88`` (EVA-g: 16). ``num_layers``
    keeps the first N blocks (as LAVIS's ``strict=False`` load into a ``depth=39`` model does with
    a longer checkpoint); default: all. ``pos_embed`` is resized bicubically to ``image_size /
    patch`` per side, exactly as LAVIS's ``interpolate_pos_embed``.

    Writes ``config.json``, ``model.safetensors`` (float32 whatever the source dtype: fp16 -> fp32 is
    exact, and the interpolated position embeddings are computed in fp32 as LAVIS does) and
    ``preprocessor_config.json`` into ``out_dir``, which must not exist or be empty; everything is
    checked before anything is written. Returns a report of what was converted.
    """
    src = Path(src).expanduser()
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output directory '{out}' exists and is not empty", hint="give a new or empty directory")
    state, ignored = _vision_state(_read_checkpoint(src), src)
    depth = _check_keys(state, src)
    sizes = _check_shapes(state, depth, src)
    source_dtype = str(state["cls_token"].dtype).replace("torch.", "")
    hidden, patch = sizes["hidden_size"], sizes["patch_size"]

    heads = hidden // EVA_HEAD_DIM if num_heads is None else int(num_heads)
    if heads < 1 or hidden % heads:
        raise ConfigError(
            f"num_heads {heads} does not divide the hidden size {hidden}"
            + (f" (the default is hidden_size // {EVA_HEAD_DIM}, EVA-g's head width)" if num_heads is None else ""),
            hint="pass num_heads (EVA-CLIP g: 16)",
        )  # fmt: skip
    if image_size < patch or image_size % patch:
        raise ConfigError(f"image_size {image_size} is not a positive multiple of the patch size {patch}")
    layers = depth if num_layers is None else int(num_layers)
    if not 1 <= layers <= depth:
        raise ConfigError(f"num_layers {layers} must be between 1 and the checkpoint's {depth} blocks")
    grid = image_size // patch

    # float32 first, so the interpolation runs in fp32 (LAVIS: pos_embed.float()) and the copy is exact
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()
             if not ((m := _BLOCK_KEY.match(k)) and int(m.group(1)) >= layers)}  # fmt: skip
    state["pos_embed"] = interpolate_pos_embed(state["pos_embed"], grid).contiguous()
    ln_vision = "copied" if LN_VISION_KEYS[0] in state else "default (weight 1, bias 0: parameter-free, as MiniGPT-v2)"
    if LN_VISION_KEYS[0] not in state:  # MiniGPT-v2's fresh, frozen ln_vision
        state.update({"ln_vision.weight": torch.ones(hidden), "ln_vision.bias": torch.zeros(hidden)})
    config = EvaViTConfig(
        image_size=image_size, patch_size=patch, num_channels=sizes["num_channels"], hidden_size=hidden,
        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=sizes["intermediate_size"],
    )  # fmt: skip
    with torch.device("meta"):  # no random init of ~1 B parameters that are overwritten next
        model = EvaViTModel(config)
    model.load_state_dict(state, strict=True, assign=True)  # every key was checked above

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:  # written aside, then moved into place: a failed save never leaves a half directory
        model.save_pretrained(staging)
        eva_image_processor(image_size).save_pretrained(staging)
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report = {
        "source": str(src),
        "out_dir": str(out),
        "image_size": image_size,
        "patch_size": patch,
        "tokens": 1 + grid * grid,
        "hidden_size": hidden,
        "num_layers": layers,
        "blocks_in_source": depth,
        "num_heads": heads,
        "intermediate_size": sizes["intermediate_size"],
        "pos_embed_grid": {"from": sizes["grid"], "to": grid},
        "keys_copied": len(state) - (2 if ln_vision != "copied" else 0),
        "keys_ignored": ignored,
        "blocks_dropped": depth - layers,
        "ln_vision": ln_vision,
        "source_dtype": source_dtype,
        "saved_dtype": "float32",
    }
    log.info("converted %s -> %s: %d tokens x %d, %d blocks, pos-embed %dx%d -> %dx%d", src, out,
             report["tokens"], hidden, layers, sizes["grid"], sizes["grid"], grid, grid)  # fmt: skip
    return report


__all__ = [
    "EvaViTConfig",
    "EvaViTImageProcessor",
    "EvaViTModel",
    "convert_eva_vit",
    "eva_image_processor",
    "interpolate_pos_embed",
]
