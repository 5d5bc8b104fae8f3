"""Operations on the projected tokens of all modalities together (after the per-modality projectors).

- :class:`ModalityPrompts`: K learned vectors per modality, prepended to that modality's tokens so
  each span in the LLM input is marked by its own learned prefix.
- :class:`CrossModalFusion`: a small pre-LN transformer over the tokens of all modalities at once
  (with a learned modality-type embedding), so e.g. audio tokens can be read in the light of the face.

Both take and return ``dict[name, Tensor (B, N_m, H)]``; ``present: dict[name, BoolTensor (B,)]``
says which rows of the batch actually have each modality.

Design choices the model relies on:

- **Identity at init.** ``CrossModalFusion`` is residual with a zero-initialised output projection:
  ``out = x + out_proj(norm(encoder(x + type_embed)))`` and ``out_proj`` starts at zero, so a fusion
  block plugged into an already trained model starts as the identity (``out == x`` exactly). At init
  only ``out_proj`` gets a non-zero gradient; the encoder layers start learning after the first step.
  ``zero_init=False`` gives a standard initialisation instead.
- **Absent modalities.** Tokens of a modality absent from a row are masked as keys
  (``key_padding_mask``): present tokens never attend to them. Their own output is their input,
  unchanged (the residual update is multiplied by 0). A row where *every* modality is absent would make
  the softmax run over an all-masked row (NaN in PyTorch); such rows attend freely among themselves
  and their update is then discarded, so no NaN ever appears.
- **depth=0** (or ``num_tokens=0`` for prompts) builds no parameters and returns the input as is.
- Both follow ``.to(dtype)``; inputs are cast to the module's parameter dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from emollm.errors import ConfigError

__all__ = ["CrossModalFusion", "ModalityPrompts"]


def _check_modalities(modalities: list[str] | tuple[str, ...], owner: str) -> list[str]:
    names = list(modalities)
    if not names:
        raise ConfigError(f"{owner}: 'modalities' is empty; give at least one modality name")
    for name in names:
        if not isinstance(name, str) or not name or "." in name:
            raise ConfigError(f"{owner}: invalid modality name {name!r} (a non-empty string without '.')")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{owner}: modality names repeat: {dup}")
    return names


def _check_int(value: object, key: str, owner: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _unknown_modality(name: str, known: list[str], owner: str) -> ValueError:
    return ValueError(f"{owner}: got tokens for modality '{name}', which it was not built for (built for {known})")


class ModalityPrompts(nn.Module):
    """K learned prompt vectors per modality, prepended to that modality's tokens.

    ``forward(tokens: dict[name, (B, N_m, H)]) -> dict[name, (B, K + N_m, H)]``; the prompts come
    first. ``extra_tokens == K``. Initialised ``N(0, init_std²)`` (0.02: the scale of a freshly
    initialised LLaMA embedding row). Parameters: ``prompts.<name>`` of shape ``(K, H)``.
    """

    def __init__(self, modalities: list[str], num_tokens: int, hidden_size: int, init_std: float = 0.02):
        super().__init__()
        owner = "ModalityPrompts"
        self.modalities = _check_modalities(modalities, owner)
        self.num_tokens = _check_int(num_tokens, "num_tokens", owner, minimum=0)
        self.hidden_size = _check_int(hidden_size, "hidden_size", owner, minimum=1)
        self.prompts = nn.ParameterDict()
        if self.num_tokens:
            for name in self.modalities:
                self.prompts[name] = nn.Parameter(torch.randn(self.num_tokens, self.hidden_size) * init_std)

    @property
    def extra_tokens(self) -> int:
        return self.num_tokens

    def forward(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, x in tokens.items():
            if name not in self.modalities:
                raise _unknown_modality(name, self.modalities, "ModalityPrompts")
            if not self.num_tokens:
                out[name] = x
                continue
            prompt = self.prompts[name]
            x = x.to(prompt.dtype)
            out[name] = torch.cat([prompt.unsqueeze(0).expand(x.shape[0], -1, -1), x], dim=1)
        return out


class CrossModalFusion(nn.Module):
    """A pre-LN transformer over the concatenated tokens of all modalities, residual and masked.

    ``forward(tokens: dict[name, (B, N_m, H)], present: dict[name, BoolTensor (B,)] | None = None)``
    returns a dict with the same keys and shapes. ``present=None`` means every row has every
    modality. Only the modalities given are fused (a subset of ``modalities`` is fine).

    Parameters (depth > 0): ``type_embed (M, H)`` (one learned vector per modality, added to the
    transformer's input only), ``layers.<i>`` (``nn.TransformerEncoderLayer``, batch_first,
    norm_first, GELU, FFN ``ffn_mult × H``), ``norm`` (final LayerNorm), ``out_proj`` (zero-init
    when ``zero_init``). See the module docstring for masking and the identity-at-init choice.
    """

    def __init__(
        self,
        hidden_size: int,
        depth: int,
        num_heads: int,
        modalities: list[str],
        dropout: float = 0.0,
        *,
        ffn_mult: int = 4,
        zero_init: bool = True,
    ):
        super().__init__()
        owner = "CrossModalFusion"
        self.hidden_size = _check_int(hidden_size, "hidden_size", owner, minimum=1)
        self.depth = _check_int(depth, "depth", owner, minimum=0)
        self.num_heads = _check_int(num_heads, "num_heads", owner, minimum=1)
        self.modalities = _check_modalities(modalities, owner)
        _check_int(ffn_mult, "ffn_mult", owner, minimum=1)
        if hidden_size % num_heads:
            raise ConfigError(f"{owner}: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
            raise ConfigError(f"{owner}: 'dropout' must be in [0, 1), got {dropout!r}")
        self.zero_init = bool(zero_init)
        if self.depth == 0:
            return
        self.type_embed = nn.Parameter(torch.randn(len(self.modalities), hidden_size) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                hidden_size,
                num_heads,
                dim_feedforward=ffn_mult * hidden_size,
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(self.depth)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        if self.zero_init:
            nn.init.zeros_(self.out_proj.weight)
            nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, tokens: dict[str, torch.Tensor], present: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        if self.depth == 0 or not tokens:
            return dict(tokens)
        names = list(tokens)
        first = tokens[names[0]]
        batch = first.shape[0]
        dtype = self.out_proj.weight.dtype
        xs, type_ids, keep, lengths = [], [], [], []
        for name in names:
            if name not in self.modalities:
                raise _unknown_modality(name, self.modalities, "CrossModalFusion")
            x = tokens[name]
            if x.dim() != 3 or x.shape[0] != batch or x.shape[-1] != self.hidden_size:
                raise ValueError(
                    f"CrossModalFusion: tokens of '{name}' have shape {tuple(x.shape)}; "
                    f"expected ({batch}, N, {self.hidden_size})"
                )
            if present is None:
                row = torch.ones(batch, dtype=torch.bool, device=x.device)
            elif name not in present:
                raise ValueError(f"CrossModalFusion: 'present' has no entry for modality '{name}'")
            else:
                row = present[name].to(device=x.device, dtype=torch.bool).reshape(batch)
            n = x.shape[1]
            xs.append(x.to(dtype))
            type_ids.append(torch.full((n,), self.modalities.index(name), dtype=torch.long, device=x.device))
            keep.append(row[:, None].expand(batch, n))
            lengths.append(n)
        x = torch.cat(xs, dim=1)  # (B, N, H)
        keep_mask = torch.cat(keep, dim=1)  # (B, N) True where the token's modality is present
        h = x + self.type_embed[torch.cat(type_ids)].unsqueeze(0)
        # Rows where nothing is present: let them attend freely (all-masked softmax is NaN); their
        # update is thrown away below, so what they compute does not matter.
        empty_row = ~keep_mask.any(dim=1, keepdim=True)
        padding_mask = ~(keep_mask | empty_row)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=padding_mask)
        delta = self.out_proj(self.norm(h))
        out = x + delta * keep_mask.unsqueeze(-1).to(delta.dtype)
        return dict(zip(names, torch.split(out, lengths, dim=1), strict=True))
