"""The learned Action-Unit encoder: a per-frame AU sequence in, ``K`` tokens out.

The AU order (:data:`MERR_AUS`) and scale live in the dataset core (:mod:`emollm.dataset.aus`): the
dataset builder writes the per-frame AU side files in that order and the model reads them in it.

Input per clip: ``(T, 2 * num_aus)`` float, first the ``num_aus`` intensities (0-5, OpenFace
``AUxx_r``), then the ``num_aus`` presences (0/1, OpenFace ``AUxx_c``), both in :data:`MERR_AUS`
order, plus a frame mask (True = a real frame; padding and frames without a face are False).

:class:`AUEncoder` (trained with the model, never frozen):

1. scale: intensity / 5 (clamped to [0, 1]), presence clamped to [0, 1]; masked frames are
   replaced by zeros first, so whatever they hold (even NaN) never reaches the output;
2. ``Linear(2 * num_aus, hidden_size)`` + LayerNorm;
3. a learned temporal position embedding, one row per frame index up to ``max_frames``; a longer
   sequence gets the table linearly **interpolated** to its length (rows then mean "relative
   position", like ViT's position interpolation), so no frame is ever dropped;
4. ``depth`` pre-norm transformer layers over the frames (masked frames are never attended to;
   ``depth=0`` skips this);
5. ``num_tokens`` learned queries cross-attend over the frames (Perceiver / Q-Former style, one
   pre-norm cross-attention + MLP block) -> ``(B, num_tokens, hidden_size)``, final LayerNorm.

A row with no valid frame at all gives all-zero tokens (finite; the model's ``missing_modality``
decides what that row sees anyway).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# the AU order and scale are dataset facts: the core declares them (re-exported here for old imports)
from emollm.dataset.aus import AU_INTENSITY_MAX, MERR_AUS  # noqa: F401
from emollm.errors import ConfigError

#: The AU encoder's option defaults, declared once: :class:`AUEncoder`'s keyword defaults, the ``au``
#: registry entry's (``build_encoder("au")``) and, but for the token count, a model's AU modality.
AU_ENCODER_DEFAULTS: dict[str, int | float] = {
    "num_tokens": 1, "hidden_size": 256, "depth": 1, "num_heads": 4, "max_frames": 128, "dropout": 0.0,
}  # fmt: skip
#: A model's AU modality (a config's ``encoders`` entry, ``EmoLLMConfig.modalities``) whose
#: ``au_encoder`` options leave ``num_tokens`` unset gets this many tokens, not the module's 1.
MODEL_AU_NUM_TOKENS = 4


class AUEncoder(nn.Module):
    """``forward(au (B, T, 2*num_aus), mask (B, T) bool | None) -> (B, num_tokens, hidden_size)``."""

    def __init__(
        self,
        num_aus: int = len(MERR_AUS),
        num_tokens: int = AU_ENCODER_DEFAULTS["num_tokens"],
        hidden_size: int = AU_ENCODER_DEFAULTS["hidden_size"],
        depth: int = AU_ENCODER_DEFAULTS["depth"],
        num_heads: int = AU_ENCODER_DEFAULTS["num_heads"],
        max_frames: int = AU_ENCODER_DEFAULTS["max_frames"],
        dropout: float = AU_ENCODER_DEFAULTS["dropout"],
    ):
        super().__init__()
        for name, value in (("num_aus", num_aus), ("num_tokens", num_tokens), ("hidden_size", hidden_size),
                            ("num_heads", num_heads), ("max_frames", max_frames)):  # fmt: skip
            if int(value) <= 0:
                raise ConfigError(f"AU encoder option '{name}' must be > 0, got {value}")
        if depth < 0:
            raise ConfigError(f"AU encoder option 'depth' must be >= 0, got {depth}")
        if hidden_size % num_heads:
            raise ConfigError(
                f"AU encoder option 'hidden_size' ({hidden_size}) must be divisible by num_heads ({num_heads})"
            )
        self.num_aus, self.num_tokens, self.hidden_size = num_aus, num_tokens, hidden_size
        self.max_frames = max_frames

        self.input_proj = nn.Linear(2 * num_aus, hidden_size)
        self.input_norm = nn.LayerNorm(hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(max_frames, hidden_size))
        if depth > 0:
            layer = nn.TransformerEncoderLayer(
                hidden_size, num_heads, 4 * hidden_size, dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.frames: nn.TransformerEncoder | None = nn.TransformerEncoder(
                layer, depth, norm=nn.LayerNorm(hidden_size), enable_nested_tensor=False
            )
        else:
            self.frames = None
        self.queries = nn.Parameter(torch.zeros(num_tokens, hidden_size))
        self.query_norm = nn.LayerNorm(hidden_size)
        self.kv_norm = nn.LayerNorm(hidden_size)
        self.cross_attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.mlp_norm = nn.LayerNorm(hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * hidden_size, hidden_size),
        )
        self.out_norm = nn.LayerNorm(hidden_size)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.queries, std=0.02)

    def positions(self, num_frames: int) -> torch.Tensor:
        """``(num_frames, hidden)``: the first rows, or the whole table interpolated when longer."""
        if num_frames <= self.max_frames:
            return self.pos_embed[:num_frames]
        table = self.pos_embed.t().unsqueeze(0)  # (1, H, max_frames)
        return F.interpolate(table, size=num_frames, mode="linear", align_corners=True)[0].t()

    def forward(self, au: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if au.dim() != 3 or au.shape[-1] != 2 * self.num_aus:
            raise ValueError(f"AU input must be (B, T, {2 * self.num_aus}), got {tuple(au.shape)}")
        batch, frames, _ = au.shape
        mask = torch.ones(batch, frames, dtype=torch.bool, device=au.device) if mask is None else mask.bool()
        if mask.shape != (batch, frames):
            raise ValueError(f"AU mask must be (B, T) = {(batch, frames)}, got {tuple(mask.shape)}")

        dtype = self.input_proj.weight.dtype
        au = torch.where(mask.unsqueeze(-1), au, torch.zeros((), dtype=au.dtype, device=au.device)).to(dtype)
        intensity = au[..., : self.num_aus].clamp(0.0, AU_INTENSITY_MAX) / AU_INTENSITY_MAX
        presence = au[..., self.num_aus :].clamp(0.0, 1.0)
        h = self.input_norm(self.input_proj(torch.cat([intensity, presence], dim=-1))) + self.positions(frames)

        empty = ~mask.any(dim=1)  # rows with no valid frame: let them attend to frame 0, zero them at the end
        attend = mask.clone()
        attend[:, 0] |= empty  # (a boolean-indexed write would read the mask back from the device)
        padding = ~attend
        if self.frames is not None:
            h = self.frames(h, src_key_padding_mask=padding)

        queries = self.queries.unsqueeze(0).expand(batch, -1, -1)
        kv = self.kv_norm(h)
        attended, _ = self.cross_attn(self.query_norm(queries), kv, kv, key_padding_mask=padding, need_weights=False)
        tokens = queries + attended
        tokens = self.out_norm(tokens + self.mlp(self.mlp_norm(tokens)))
        return tokens.masked_fill(empty[:, None, None], 0.0)
