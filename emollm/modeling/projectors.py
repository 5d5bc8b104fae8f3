"""Projectors: encoder features ``(B, T, in_dim)`` -> LLM-space tokens ``(B, T', out_dim)``.

A registry of projector layers (``linear``, ``mlp2x_gelu``, ``identity``; add your own with
:func:`register_projector`) and :func:`build_projector`, which wraps the chosen layer with the
token options every projector supports:

``regroup: k`` (default 1)
    Concatenate k neighbouring tokens before projecting: ``(B, T, D) -> (B, T/k, k·D)``; token
    ``i·k + j`` lands in feature slice ``[j·D, (j+1)·D)`` of new token ``i`` (order kept). The layer's
    in_dim is then ``k·in_dim``. Emotion-LLaMA regroups EVA-CLIP patches 4 -> 1
    (1024 × 1408 -> 256 × 5632).
``cls_token: "none" | "separate" | "drop"`` (default ``"none"``)
    How a leading CLS token (input ``(B, 1 + T, D)``) is treated. ``"none"``: it is an ordinary token
    (and is regrouped with the patches). ``"separate"`` (Emotion-LLaMA): the CLS token goes through
    its own layer of the same kind (``in_dim -> out_dim``, no regroup) while the patches are regrouped
    and projected; output ``(B, 1 + T/k, out_dim)``, CLS first. ``"drop"``: the CLS token is removed
    (LLaVA's ``select_feature="patch"``); output ``(B, T/k, out_dim)``.
``cls_position: "first" | "last"`` (default ``"first"``)
    With ``cls_token="separate"``: where the projected CLS token goes in the output. Emotion-LLaMA
    puts it last (``cat(patches, features, cls)``); with ``span_tail`` (docs/model.md) the last
    token is written at its own placeholder, after the other features.
``num_input_tokens: int`` (optional)
    The input token count (CLS included) when known: divisibility by ``regroup`` is then checked at
    build time instead of at the first forward.

Every built projector has ``output_tokens(T) -> T'`` (``T`` counts the CLS token) and casts its
input to its weight dtype (bf16 training on fp16 / fp32 cached features).

:class:`MediaProjector` holds one projector per modality, then optional :class:`ModalityPrompts`
and :class:`CrossModalFusion`; see its docstring for the ZeRO-3 rule it keeps.

User errors (unknown projector or option, bad dims, regroup not dividing the token count) raise
:class:`emollm.errors.ConfigError` naming the key and the closest valid one.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from emollm.errors import ConfigError
from emollm.modeling.fusion import CrossModalFusion, ModalityPrompts

__all__ = [
    "PROJECTORS",
    "CLS_TOKEN_MODES",
    "IdentityProjector",
    "LinearProjector",
    "MediaProjector",
    "MLP2xGeluProjector",
    "Projector",
    "build_projector",
    "list_projectors",
    "register_projector",
]

#: name -> factory ``(in_dim, out_dim, **layer_options) -> nn.Module`` (a class or a function).
PROJECTORS: dict[str, Callable[..., nn.Module]] = {}

#: The token options :func:`build_projector` handles for every projector.
COMMON_OPTIONS = ("regroup", "cls_token", "cls_position", "num_input_tokens")
CLS_TOKEN_MODES = ("none", "separate", "drop")
CLS_POSITIONS = ("first", "last")


def _closest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _int_option(value: object, key: str, owner: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: '{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _module_dtype(module: nn.Module, fallback: torch.dtype) -> torch.dtype:
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return fallback


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def register_projector(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a projector layer under ``name``.

    The decorated class (or function) is called as ``factory(in_dim, out_dim, **layer_options)``
    and returns a module mapping ``(B, T, in_dim) -> (B, T', out_dim)`` with ``output_tokens(T)``.
    Its keyword parameters (besides in_dim / out_dim) are its layer options; the token options
    (regroup, cls_token, num_input_tokens) are added by :func:`build_projector` for every projector.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"projector name must be a non-empty string, got {name!r}")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in PROJECTORS and PROJECTORS[name] is not factory:
            raise ValueError(f"projector '{name}' is already registered (by {PROJECTORS[name]!r})")
        PROJECTORS[name] = factory
        return factory

    return decorator


def list_projectors() -> list[str]:
    """Registered projector names, sorted."""
    return sorted(PROJECTORS)


def _layer_options(factory: Callable[..., nn.Module]) -> tuple[list[str], bool]:
    """The keyword options a factory accepts besides in_dim / out_dim, and whether it takes **kwargs."""
    params = inspect.signature(factory).parameters
    names = [
        p.name
        for p in params.values()
        if p.name not in ("self", "in_dim", "out_dim") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return names, any(p.kind is p.VAR_KEYWORD for p in params.values())


@register_projector("linear")
class LinearProjector(nn.Module):
    """One ``nn.Linear(in_dim, out_dim)`` (Emotion-LLaMA). Parameters: ``proj.weight``, ``proj.bias``."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)

    def output_tokens(self, num_tokens: int) -> int:
        return num_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@register_projector("mlp2x_gelu")
class MLP2xGeluProjector(nn.Module):
    """LLaVA-1.5: ``Linear(in_dim, hidden_dim) -> GELU -> Linear(hidden_dim, out_dim)``.

    ``hidden_dim`` defaults to ``out_dim`` (as LLaVA). Parameters: ``fc1.*``, ``fc2.*``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden = out_dim if hidden_dim is None else _int_option(hidden_dim, "hidden_dim", "mlp2x_gelu", minimum=1)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)

    def output_tokens(self, num_tokens: int) -> int:
        return num_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@register_projector("identity")
class IdentityProjector(nn.Module):
    """No parameters; only when ``in_dim == out_dim`` (pre-projected features, tests).

    Holds an empty non-persistent buffer so that it follows ``.to(dtype)`` like the others.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        if in_dim != out_dim:
            raise ConfigError(
                f"projector 'identity' needs in_dim == out_dim, got {in_dim} -> {out_dim}",
                hint="use 'linear' or 'mlp2x_gelu' to change the dimension",
            )
        self.in_dim, self.out_dim = in_dim, out_dim
        self.register_buffer("_dtype_probe", torch.empty(0), persistent=False)

    def output_tokens(self, num_tokens: int) -> int:
        return num_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self._dtype_probe.dtype)


class Projector(nn.Module):
    """What :func:`build_projector` returns: the token options around a registered layer.

    Submodules: ``layer`` (the registered projector, in_dim ``regroup·in_dim``) and, with
    ``cls_token="separate"``, ``cls_layer`` (same kind, ``in_dim -> out_dim``). So a plain ``linear``
    projector's weights are ``layer.proj.weight`` / ``layer.proj.bias``.
    """

    def __init__(
        self,
        name: str,
        in_dim: int,
        out_dim: int,
        layer: nn.Module,
        *,
        regroup: int = 1,
        cls_token: str = "none",
        cls_layer: nn.Module | None = None,
        cls_position: str = "first",
        num_input_tokens: int | None = None,
    ):
        super().__init__()
        self.name = name
        self.in_dim, self.out_dim = in_dim, out_dim
        self.regroup = regroup
        self.cls_token = cls_token
        self.cls_position = cls_position
        self.num_input_tokens = num_input_tokens
        self.layer = layer
        self.cls_layer = cls_layer

    @property
    def _num_cls(self) -> int:
        return 0 if self.cls_token == "none" else 1

    def _patch_tokens(self, num_tokens: int) -> int:
        patches = num_tokens - self._num_cls
        if patches < 0 or (self._num_cls and patches == 0 and self.cls_token == "drop"):
            raise ValueError(
                f"projector '{self.name}': {num_tokens} input token(s) leave no tokens after the CLS token"
            )
        if patches % self.regroup:
            cls = f" ({num_tokens} minus the CLS token)" if self._num_cls else ""
            raise ValueError(
                f"projector '{self.name}': T={patches} tokens{cls} is not divisible by regroup k={self.regroup}"
            )
        return patches // self.regroup

    def output_tokens(self, num_tokens: int) -> int:
        """Output token count for ``num_tokens`` input tokens (the CLS token included)."""
        out = self.layer.output_tokens(self._patch_tokens(num_tokens))
        if self.cls_token == "separate":
            out += self.cls_layer.output_tokens(1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"projector '{self.name}' expects features (B, T, {self.in_dim}), got {tuple(x.shape)}")
        x = x.to(_module_dtype(self, x.dtype))
        batch, num_tokens, dim = x.shape
        groups = self._patch_tokens(num_tokens)
        cls, patches = x[:, : self._num_cls], x[:, self._num_cls :]
        if self.regroup > 1:
            # row-major reshape: new token i = concat(token i·k, ..., token i·k + k - 1)
            patches = patches.reshape(batch, groups, self.regroup * dim)
        out = self.layer(patches)
        if self.cls_token == "separate":
            parts = [self.cls_layer(cls), out] if self.cls_position == "first" else [out, self.cls_layer(cls)]
            out = torch.cat(parts, dim=1)
        return out

    def extra_repr(self) -> str:
        position = f", cls_position={self.cls_position!r}" if self.cls_token == "separate" else ""
        return (f"name={self.name!r}, in_dim={self.in_dim}, out_dim={self.out_dim}, regroup={self.regroup}, "
                f"cls_token={self.cls_token!r}{position}")


def build_projector(name: str, in_dim: int, out_dim: int, **options: Any) -> Projector:
    """Build the registered projector ``name`` mapping ``(B, T, in_dim) -> (B, T', out_dim)``.

    ``options``: the token options (``regroup``, ``cls_token``, ``num_input_tokens``; see the module
    docstring) plus the layer's own (``linear``: ``bias``; ``mlp2x_gelu``: ``hidden_dim``).
    Unknown names / options and bad values raise :class:`ConfigError`.
    """
    if name not in PROJECTORS:
        raise ConfigError(
            f"unknown projector '{name}'{_closest(name, list_projectors())} (valid: {', '.join(list_projectors())})"
        )
    factory = PROJECTORS[name]
    owner = f"projector '{name}'"
    in_dim = _int_option(in_dim, "in_dim", owner, minimum=1)
    out_dim = _int_option(out_dim, "out_dim", owner, minimum=1)

    layer_names, any_kw = _layer_options(factory)
    valid = sorted({*COMMON_OPTIONS, *layer_names})
    for key in options:
        if key not in valid and not any_kw:
            raise ConfigError(
                f"unknown option '{key}' for {owner}{_closest(key, valid)} (valid options: {', '.join(valid)})"
            )
    layer_options = {k: v for k, v in options.items() if k not in COMMON_OPTIONS}

    regroup = _int_option(options.get("regroup", 1), "regroup", owner, minimum=1)
    cls_token = options.get("cls_token", "none")
    cls_token = "none" if cls_token is None else cls_token
    if cls_token not in CLS_TOKEN_MODES:
        raise ConfigError(
            f"{owner}: 'cls_token' must be one of {list(CLS_TOKEN_MODES)}, got {cls_token!r}"
            f"{_closest(str(cls_token), list(CLS_TOKEN_MODES))}"
        )
    cls_position = options.get("cls_position", "first")
    if cls_position not in CLS_POSITIONS:
        raise ConfigError(f"{owner}: 'cls_position' must be one of {list(CLS_POSITIONS)}, got {cls_position!r}")
    if cls_position != "first" and cls_token != "separate":
        raise ConfigError(f"{owner}: 'cls_position' applies to cls_token 'separate' only (cls_token is {cls_token!r})")
    num_input_tokens = options.get("num_input_tokens")
    if num_input_tokens is not None:
        num_input_tokens = _int_option(num_input_tokens, "num_input_tokens", owner, minimum=1)

    layer = factory(in_dim * regroup, out_dim, **layer_options)
    cls_layer = factory(in_dim, out_dim, **layer_options) if cls_token == "separate" else None
    projector = Projector(
        name,
        in_dim,
        out_dim,
        layer,
        regroup=regroup,
        cls_token=cls_token,
        cls_layer=cls_layer,
        cls_position=cls_position,
        num_input_tokens=num_input_tokens,
    )
    if num_input_tokens is not None:
        try:
            projector.output_tokens(num_input_tokens)
        except ValueError as exc:
            raise ConfigError(
                f"{exc} (num_input_tokens={num_input_tokens})",
                hint="choose a regroup factor that divides the encoder's token count (CLS excluded)",
            ) from None
    return projector


_FUSION_KEYS = ("depth", "num_heads", "dropout", "ffn_mult", "zero_init")


class MediaProjector(nn.Module):
    """Per modality a projector, then optional modality prompts, then optional cross-modal fusion.

    Build it with :meth:`from_spec`. ``forward(features, present)`` returns
    ``dict[name, (B, num_tokens(name), hidden_size)]`` for **every** modality of the spec, in spec
    order, whatever the batch holds.

    ZeRO-3 rule: every submodule runs on every call. A modality missing from ``features`` is
    projected from a zero tensor ``(B, num_input_tokens, in_dim)`` and treated as absent in all rows.
    Outputs of absent rows (``present[name][b] == False``, or the whole modality missing) are
    multiplied by 0: exact zeros, and every parameter still gets a (zero-weighted) gradient.
    """

    def __init__(
        self,
        projectors: Mapping[str, Projector],
        num_input_tokens: Mapping[str, int],
        hidden_size: int,
        prompts: ModalityPrompts | None = None,
        fusion: CrossModalFusion | None = None,
        spec: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.modalities = list(projectors)
        self.projectors = nn.ModuleDict(projectors)
        self.num_input_tokens = dict(num_input_tokens)
        self.hidden_size = hidden_size
        self.prompts = prompts
        self.fusion = fusion
        self.spec = spec

    @classmethod
    def from_spec(
        cls,
        modalities: Mapping[str, Mapping[str, Any]],
        hidden_size: int,
        prompt_tokens: int = 0,
        fusion: Mapping[str, Any] | None = None,
    ) -> MediaProjector:
        """Build from a plain spec (see docs/model.md)::

            MediaProjector.from_spec(
                {"video": {"in_dim": 1408, "num_input_tokens": 257, "projector": "linear",
                           "regroup": 4, "cls_token": "separate"},
                 "audio": {"in_dim": 1024, "num_input_tokens": 1, "projector": "mlp2x_gelu"}},
                hidden_size=4096,
                prompt_tokens=2,                              # 0: no modality prompts
                fusion={"depth": 2, "num_heads": 8},          # None or depth 0: no fusion
            )

        Per modality: ``in_dim`` and ``num_input_tokens`` (T of the cached feature, CLS included)
        are required, ``projector`` defaults to ``"linear"``, every other key is a projector option.
        ``fusion`` keys: depth, num_heads, dropout (0.0), ffn_mult (4), zero_init (True).
        """
        hidden_size = _int_option(hidden_size, "hidden_size", "MediaProjector", minimum=1)
        if not isinstance(modalities, Mapping) or not modalities:
            raise ConfigError("MediaProjector: 'modalities' must be a non-empty mapping of modality name -> spec")
        projectors: dict[str, Projector] = {}
        tokens: dict[str, int] = {}
        for name, entry in modalities.items():
            if not isinstance(entry, Mapping):
                raise ConfigError(
                    f"modality '{name}': the projector spec must be a mapping, got {type(entry).__name__}"
                )
            for key in ("in_dim", "num_input_tokens"):
                if key not in entry:
                    raise ConfigError(f"modality '{name}': the projector spec needs '{key}'")
            options = {k: v for k, v in entry.items() if k not in ("in_dim", "projector")}
            try:
                projectors[name] = build_projector(
                    entry.get("projector", "linear"), entry["in_dim"], hidden_size, **options
                )
            except ConfigError as exc:
                raise ConfigError(f"modality '{name}': {exc.message}", hint=exc.hint) from None
            tokens[name] = entry["num_input_tokens"]
        names = list(projectors)
        prompt_tokens = _int_option(prompt_tokens, "prompt_tokens", "MediaProjector", minimum=0)
        prompts = ModalityPrompts(names, prompt_tokens, hidden_size) if prompt_tokens else None
        fusion_module = None
        if fusion:
            if not isinstance(fusion, Mapping):
                raise ConfigError(f"MediaProjector: 'fusion' must be a mapping or null, got {type(fusion).__name__}")
            for key in fusion:
                if key not in _FUSION_KEYS:
                    raise ConfigError(
                        f"unknown fusion option '{key}'{_closest(key, list(_FUSION_KEYS))} "
                        f"(valid options: {', '.join(_FUSION_KEYS)})"
                    )
            if fusion.get("depth", 0):
                if "num_heads" not in fusion:
                    raise ConfigError("fusion: 'num_heads' is required when depth > 0")
                fusion_module = CrossModalFusion(
                    hidden_size,
                    fusion["depth"],
                    fusion["num_heads"],
                    names,
                    fusion.get("dropout", 0.0),
                    ffn_mult=fusion.get("ffn_mult", 4),
                    zero_init=fusion.get("zero_init", True),
                )
        spec = {
            "modalities": {n: dict(e) for n, e in modalities.items()},
            "hidden_size": hidden_size,
            "prompt_tokens": prompt_tokens,
            "fusion": dict(fusion) if fusion else None,
        }
        return cls(projectors, tokens, hidden_size, prompts=prompts, fusion=fusion_module, spec=spec)

    def to_spec(self) -> dict[str, Any]:
        """The keyword arguments of :meth:`from_spec` that built this module (for saving in a config)."""
        if self.spec is None:
            raise ValueError("this MediaProjector was not built by from_spec")
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.spec.items()}

    @property
    def prompt_tokens(self) -> int:
        return self.prompts.extra_tokens if self.prompts is not None else 0

    def num_tokens(self, name: str) -> int:
        """Tokens per clip of modality ``name`` in the LLM input: projector output + prompt tokens."""
        if name not in self.projectors:
            raise KeyError(
                f"no projector for modality '{name}'{_closest(name, self.modalities)} (have {self.modalities})"
            )
        return self.projectors[name].output_tokens(self.num_input_tokens[name]) + self.prompt_tokens

    def forward(
        self,
        features: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor] | None = None,
        *,
        batch_size: int | None = None,
    ) -> dict[str, torch.Tensor]:
        present = dict(present or {})
        for name in features:
            if name not in self.projectors:
                raise ValueError(
                    f"MediaProjector: features for unknown modality '{name}'{_closest(name, self.modalities)} "
                    f"(have {self.modalities})"
                )
        batch = batch_size
        if batch is None:
            for tensor in (*features.values(), *present.values()):
                batch = tensor.shape[0]
                break
        if batch is None:
            raise ValueError("MediaProjector: cannot tell the batch size (no features, no present); pass batch_size")

        out: dict[str, torch.Tensor] = {}
        masks: dict[str, torch.Tensor] = {}
        for name, projector in self.projectors.items():
            device = _module_device(projector)
            x = features.get(name)
            if x is None:
                x = torch.zeros(
                    batch,
                    self.num_input_tokens[name],
                    projector.in_dim,
                    dtype=_module_dtype(projector, torch.float32),
                    device=device,
                )
                row = torch.zeros(batch, dtype=torch.bool, device=device)
            else:
                if x.dim() != 3 or x.shape[0] != batch or x.shape[1] != self.num_input_tokens[name]:
                    raise ValueError(
                        f"MediaProjector: features of '{name}' have shape {tuple(x.shape)}; expected "
                        f"({batch}, {self.num_input_tokens[name]}, {projector.in_dim})"
                    )
                row = present.get(name)
                if row is None:
                    row = torch.ones(batch, dtype=torch.bool, device=x.device)
                row = row.to(device=x.device, dtype=torch.bool).reshape(batch)
            y = projector(x)
            masks[name] = row
            out[name] = y * row[:, None, None].to(y.dtype)
        if self.prompts is not None:
            out = self.prompts(out)
        if self.fusion is not None:
            out = self.fusion(out, masks)
        return {name: y * masks[name][:, None, None].to(y.dtype) for name, y in out.items()}
