"""Loss terms the baselines share (HLM12ERC's, and any method that wants them).

All take raw ``logits`` ``(B, C)`` and class indices ``targets`` ``(B,)`` and return a scalar (mean over
the batch unless said otherwise):

- :func:`focal_loss`  ``mean_i alpha[y_i] (1 - p_i)^gamma (-log p_i)``, ``p_i`` the softmax probability
  of the true class (Lin et al. 2017; HLM12ERC's multi-class form with one alpha per class);
- :func:`dice_loss`   ``1 - mean_c 2 TP_c / (2 TP_c + FP_c + FN_c + eps)`` on softmax probabilities over
  the batch, ``TP_c = sum_i p_ic y_ic``, ``FP_c = sum_i p_ic (1 - y_ic)``, ``FN_c = sum_i (1 - p_ic) y_ic``
  (soft Dice per class, averaged over classes: HLM12ERC's Dice-coefficient loss);
- :func:`triplet_loss` on embeddings ``(B, E)``: Euclidean distances, hinge ``max(0, d_ap - d_an + m)``
  (or the soft margin ``log(1 + exp(d_ap - d_an))``) over the batch-hard triplet of each anchor
  (hardest positive, hardest negative; Hermans et al. 2017) or over every valid triplet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from emollm.errors import ConfigError


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, *, gamma: float = 2.0,
               alpha: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Multi-class focal loss; ``alpha`` is one weight per class (None: 1 for every class).

    ``gamma = 0`` and no ``alpha`` is the cross-entropy. Computed from ``log_softmax`` (stable for
    confident logits)."""
    log_p = F.log_softmax(logits.float(), dim=-1).gather(1, targets.long().unsqueeze(1)).squeeze(1)
    p = log_p.exp()
    weight = (1.0 - p).clamp(min=0.0).pow(gamma)
    if alpha is not None:
        alpha_t = torch.as_tensor(alpha, dtype=weight.dtype, device=weight.device)
        if alpha_t.shape != (logits.shape[-1],):
            raise ConfigError(f"focal alpha needs one weight per class ({logits.shape[-1]}), got {alpha_t.numel()}")
        weight = weight * alpha_t[targets.long()]
    return (-weight * log_p).mean()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """Soft multi-class Dice loss over the batch: one minus the mean per-class Dice coefficient."""
    probs = F.softmax(logits.float(), dim=-1)
    onehot = F.one_hot(targets.long(), probs.shape[-1]).to(probs.dtype)
    tp = (probs * onehot).sum(dim=0)
    fp = (probs * (1.0 - onehot)).sum(dim=0)
    fn = ((1.0 - probs) * onehot).sum(dim=0)
    return 1.0 - (2.0 * tp / (2.0 * tp + fp + fn + eps)).mean()


def pairwise_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances ``(B, B)``; the clamp keeps the square root differentiable at 0."""
    e = embeddings.float()
    squared = (e.unsqueeze(1) - e.unsqueeze(0)).pow(2).sum(dim=-1)
    return squared.clamp(min=eps).sqrt()


def triplet_loss(embeddings: torch.Tensor, targets: torch.Tensor, *, margin: float | None = 0.2,
                 mining: Literal["batch_hard", "all"] = "batch_hard") -> torch.Tensor:
    """Triplet loss over a batch of embeddings with class labels.

    ``mining="batch_hard"``: for every anchor that has a positive (same class, another sample) and a
    negative in the batch, its farthest positive and nearest negative; the mean over those anchors.
    ``"all"``: the mean over every valid triplet (a, p, n). ``margin=None`` uses the soft margin
    ``softplus(d_ap - d_an)``. A batch without any valid triplet gives 0 (with a gradient path), so
    a class-aware sampler (:class:`~emollm.baselines.data.ClassAwareBatchSampler`) should feed it.
    """
    if mining not in ("batch_hard", "all"):
        raise ConfigError(f"triplet mining must be 'batch_hard' or 'all', got {mining!r}")
    dist = pairwise_distances(embeddings)
    labels = targets.long()
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same

    def hinge(gap: torch.Tensor) -> torch.Tensor:
        return F.softplus(gap) if margin is None else F.relu(gap + margin)

    if mining == "batch_hard":
        valid = positive.any(dim=1) & negative.any(dim=1)
        if not valid.any():
            return embeddings.sum() * 0.0
        hardest_positive = dist.masked_fill(~positive, float("-inf")).amax(dim=1)
        hardest_negative = dist.masked_fill(~negative, float("inf")).amin(dim=1)
        return hinge(hardest_positive[valid] - hardest_negative[valid]).mean()
    triplets = positive.unsqueeze(2) & negative.unsqueeze(1)  # [a, p, n]
    if not triplets.any():
        return embeddings.sum() * 0.0
    gaps = dist.unsqueeze(2) - dist.unsqueeze(1)  # d(a, p) - d(a, n)
    return hinge(gaps[triplets]).mean()


__all__ = ["dice_loss", "focal_loss", "pairwise_distances", "triplet_loss"]
