"""HLM12ERC (Mendes, 2023): per-modality encoders, concatenation or multi-head-attention fusion, a
feed-forward head, softmax; cross-entropy / focal / Dice losses, optional L2-normalised features and an
optional triplet term trained on class-aware batches. The MELD recipe targets weighted F1.

Shapes, for M modalities of widths ``D_m`` and ``hidden_size`` H::

    h_m = Enc_m(x_m)                       MLP on the pooled feature: (B, D_m) -> (B, H); 0 where absent
    h_m <- h_m / ||h_m||                   l2_normalize
    concat:    z = [h_1; ...; h_M]         (B, M*H)
    attention: A = MHA(S, S, S, key_padding_mask = absent) + S,  S = stack(h_m) (B, M, H)
               z = LayerNorm(mean of A over the present modalities)              (B, H)
    e = FF(z)                              feed-forward: ff_layers x (Linear, GELU, Dropout) -> (B, H)
    e <- e / ||e||                         l2_normalize (the embedding the triplet term reads)
    logits = W e + b                       (B, C); softmax at predict time

Loss = sum_k w_k L_k(logits, y) over ``losses`` (``ce``, ``focal``, ``dice``; regression: ``l1``,
``mse``) + ``triplet_weight`` x triplet(e, y) (see :mod:`emollm.baselines.losses`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from emollm.baselines.base import BaselineBatch, BaselineModel, BaselineOutput, register_baseline
from emollm.baselines.losses import dice_loss, focal_loss, triplet_loss
from emollm.errors import ConfigError

CLASSIFICATION_LOSSES = ("ce", "focal", "dice")
REGRESSION_LOSSES = ("l1", "mse")


def _mlp(in_dim: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    blocks: list[nn.Module] = []
    width = in_dim
    for _ in range(max(1, layers)):
        blocks += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
        width = hidden
    return nn.Sequential(*blocks)


def loss_weights(value: Any, task: str) -> dict[str, float]:
    """``losses`` as {name: weight}: a mapping, a list (weight 1 each) or ``"ce+dice"``."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split("+") if part.strip()]
    if isinstance(value, list | tuple):
        value = {name: 1.0 for name in value}
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"hlm12erc option 'losses' must name at least one loss, got {value!r}",
                          hint="for example losses: {ce: 1.0, dice: 0.5}, or losses: ce+dice")
    valid = CLASSIFICATION_LOSSES if task == "classification" else REGRESSION_LOSSES
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ConfigError(f"hlm12erc: unknown {task} loss(es) {unknown}", hint=f"valid: {', '.join(valid)}")
    weights = {str(k): float(v) for k, v in value.items()}
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ConfigError(f"hlm12erc: loss weights must be >= 0 with one > 0, got {weights}")
    return weights


@register_baseline("hlm12erc")
class HLM12ERC(BaselineModel):
    """See the module docstring; ``OPTIONS`` are the defaults (``baseline.options`` overrides them)."""

    OPTIONS = {
        "hidden_size": 128,  # H: every modality is projected to it
        "encoder_layers": 1,  # per-modality MLP depth (Linear, GELU, Dropout)
        "fusion": "attention",  # concat | attention
        "num_heads": 4,  # attention fusion heads (H must divide)
        "ff_layers": 1,  # feed-forward blocks after the fusion
        "dropout": 0.1,
        "l2_normalize": False,  # unit-length modality vectors and embedding (HLM12ERC's "l2norm")
        "losses": None,  # None: {ce: 1} (classification) / {l1: 1} (regression); or {ce: 1, dice: 0.5}, "ce+focal"
        "focal_gamma": 2.0,
        "focal_alpha": None,  # one weight per class (MELD: more for the rare classes), None: 1 each
        "dice_eps": 1e-8,
        "triplet_weight": 0.0,  # > 0: add the triplet term, batches become P classes x K samples
        "triplet_margin": 0.2,  # null: soft margin log(1 + exp(d_ap - d_an)) (HLM12ERC's SimCSE-like form)
        # all: every valid triplet; batch_hard (hardest positive / negative per anchor) learns faster when
        # it works, but from random features it can collapse every embedding to one point (loss = margin)
        "triplet_mining": "all",
        "triplet_classes_per_batch": 0,  # P (0: every class)
        "triplet_samples_per_class": 0,  # K (0: baseline.batch_size // P, at least 2)
    }

    def __init__(self, feature_dims, num_classes: int, *, task="classification", **options: Any):
        super().__init__(feature_dims, num_classes, task=task, **options)
        o = self.options
        hidden, dropout = int(o["hidden_size"]), float(o["dropout"])
        if o["fusion"] not in ("concat", "attention"):
            raise ConfigError(f"hlm12erc option 'fusion' must be 'concat' or 'attention', got {o['fusion']!r}")
        if o["fusion"] == "attention" and hidden % int(o["num_heads"]):
            raise ConfigError(f"hlm12erc: hidden_size {hidden} is not divisible by num_heads {o['num_heads']}")
        if task == "classification" and num_classes < 2:
            raise ConfigError(f"hlm12erc needs at least 2 classes, got {num_classes}")
        default_loss = {"ce": 1.0} if task == "classification" else {"l1": 1.0}
        self.loss_weights = loss_weights(o["losses"] if o["losses"] is not None else default_loss, task)
        if o["focal_alpha"] is not None and len(o["focal_alpha"]) != num_classes:
            raise ConfigError(f"hlm12erc option 'focal_alpha' needs {num_classes} weights (one per class), "
                              f"got {len(o['focal_alpha'])}")
        if o["triplet_mining"] not in ("batch_hard", "all"):
            raise ConfigError(f"hlm12erc option 'triplet_mining' must be batch_hard or all, got {o['triplet_mining']!r}")
        if float(o["triplet_weight"]) > 0 and task != "classification":
            raise ConfigError("hlm12erc: the triplet term needs class labels (task: classification)")
        self.modalities = list(self.feature_dims)
        self.encoders = nn.ModuleDict({name: _mlp(dim, hidden, int(o["encoder_layers"]), dropout)
                                       for name, dim in self.feature_dims.items()})  # fmt: skip
        if o["fusion"] == "attention":
            self.attention = nn.MultiheadAttention(hidden, int(o["num_heads"]), dropout=dropout, batch_first=True)
            self.fusion_norm = nn.LayerNorm(hidden)
            fused = hidden
        else:
            fused = hidden * len(self.modalities)
        self.feed_forward = _mlp(fused, hidden, int(o["ff_layers"]), dropout)
        self.head = nn.Linear(hidden, num_classes if task == "classification" else 1)

    # -- forward -----------------------------------------------------------------------------------
    def embed(self, batch: BaselineBatch) -> torch.Tensor:
        """The embedding ``e`` before the output layer ``(B, H)`` (what the triplet term compares)."""
        vectors, present = [], []
        for name in self.modalities:
            h = self.encoders[name](batch.features[name].float())
            if self.options["l2_normalize"]:
                h = F.normalize(h, dim=-1)
            mask = batch.present[name].to(h.device, torch.bool)
            vectors.append(h * mask.unsqueeze(-1).to(h.dtype))  # an absent modality contributes zeros
            present.append(mask)
        stack, mask = torch.stack(vectors, dim=1), torch.stack(present, dim=1)  # (B, M, H), (B, M)
        if self.options["fusion"] == "concat":
            fused = stack.flatten(1)
        else:
            # A row with no modality at all would give NaN attention weights: let it attend to its zeros.
            padding = ~mask & mask.any(dim=1, keepdim=True)
            attended, _ = self.attention(stack, stack, stack, key_padding_mask=padding, need_weights=False)
            attended = attended + stack
            weights = mask.to(attended.dtype).unsqueeze(-1)
            pooled = (attended * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            fused = self.fusion_norm(pooled)
        embedding = self.feed_forward(fused)
        if self.options["l2_normalize"]:
            embedding = F.normalize(embedding, dim=-1)
        return embedding

    def forward(self, batch: BaselineBatch) -> BaselineOutput:
        embedding = self.embed(batch)
        out = self.head(embedding)
        if self.task == "regression":
            result = BaselineOutput(prediction=out.squeeze(-1))
            if batch.labels is not None:
                target = batch.labels.to(out.device, out.dtype)
                terms = {"l1": lambda: F.l1_loss(result.prediction, target),
                         "mse": lambda: F.mse_loss(result.prediction, target)}
                self._combine(result, {name: terms[name]() for name in self.loss_weights})
            return result
        result = BaselineOutput(logits=out)
        if batch.labels is not None:
            y = batch.labels.to(out.device).long()
            o = self.options
            terms = {
                "ce": lambda: F.cross_entropy(out, y),
                "focal": lambda: focal_loss(out, y, gamma=float(o["focal_gamma"]), alpha=o["focal_alpha"]),
                "dice": lambda: dice_loss(out, y, eps=float(o["dice_eps"])),
            }
            parts = {name: terms[name]() for name in self.loss_weights}
            if float(o["triplet_weight"]) > 0:
                parts["triplet"] = triplet_loss(embedding, y, margin=o["triplet_margin"], mining=o["triplet_mining"])
            self._combine(result, parts)
        return result

    def _combine(self, result: BaselineOutput, parts: dict[str, torch.Tensor]) -> None:
        weights = {**self.loss_weights, "triplet": float(self.options["triplet_weight"])}
        result.loss = sum(weights[name] * value for name, value in parts.items())  # type: ignore[assignment]
        result.parts = {name: float(value.detach()) for name, value in parts.items()}

    def class_aware_batches(self) -> tuple[int, int] | None:
        if float(self.options["triplet_weight"]) <= 0:
            return None
        classes = int(self.options["triplet_classes_per_batch"]) or self.num_classes
        return min(classes, self.num_classes), int(self.options["triplet_samples_per_class"])


__all__ = ["HLM12ERC", "loss_weights"]
