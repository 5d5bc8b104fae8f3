"""DMD (Li et al., CVPR 2023, "Decoupled Multimodal Distilling for Emotion Recognition") on pooled features.

Each modality's projected feature ``x^m`` is decoupled into a modality-irrelevant part ``s^m = E_s(x^m)``
(one shared encoder) and a modality-exclusive part ``p^m = E_p^m(x^m)`` (one encoder per modality);
``D^m([s^m, p^m])`` reconstructs ``x^m``. Knowledge is then distilled inside each space by a graph
distillation unit (GD-unit), whose nodes are the modalities and whose directed edge weights are learned:

- **homogeneous** GD over the shared features ``s^m`` (already aligned, so distilled as they are);
- **heterogeneous** GD over the specific features ``p^m``, each first enhanced by cross-modal attention
  to the other modalities' ``p`` (their distributions differ, so they are bridged before distilling).

This follows the paper and its released code (``logits_*_homo`` are computed from the modality-invariant
``c_*``, the cross-modal transformers run on the modality-specific ``s_*``). The final head reads the
concatenation of the gated heterogeneous node features and the fused shared features.

Loss: ``L = L_task + lambda1 * L_dec + lambda2 * L_dtl`` with
``L_dec = L_rec + L_cyc + gamma * (L_mar + L_ort)`` (:func:`reconstruction_loss`, :func:`cycle_loss`,
:func:`margin_loss`, :func:`orthogonality_loss`) and ``L_dtl`` the sum over both graphs of
:func:`graph_distillation_loss`. ``L_task`` is cross-entropy (classification) or L1 (regression, as DMD on
MOSI / MOSEI) of the final output, plus the same loss of every node head and of the shared-fusion head
(as the released code sums them: the node logits are what the graphs distil, so they must be trained).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from emollm.baselines.base import BaselineBatch, BaselineModel, BaselineOutput, register_baseline
from emollm.errors import ConfigError


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask``; 0 (still in the graph) when there are none."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _mean_over_modalities(per_row: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``per_row`` ``(M, B)``, ``present`` ``(M, B)``: the mean over modalities of each modality's mean
    over its present rows (modalities with no present row are left out)."""
    terms = [_masked_mean(per_row[m], present[m]) for m in range(len(per_row)) if bool(present[m].any())]
    return torch.stack(terms).mean() if terms else per_row.sum() * 0.0


def reconstruction_loss(reconstructed: torch.Tensor, projected: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``L_rec``: mean over modalities of the mean squared error ``D^m([s^m, p^m])`` vs ``x^m``
    (``(M, B, H)`` tensors, squared error averaged over the features, then over present rows)."""
    return _mean_over_modalities((reconstructed - projected).pow(2).mean(dim=-1), present)


def cycle_loss(reencoded_specific: torch.Tensor, specific: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``L_cyc``: mean squared error between ``E_p^m(D^m([s^m, p^m]))`` and ``p^m``: a reconstruction
    must keep the modality-exclusive part it was built from."""
    return _mean_over_modalities((reencoded_specific - specific).pow(2).mean(dim=-1), present)


def orthogonality_loss(shared: torch.Tensor, specific: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``L_ort``: mean over modalities and present rows of ``|cos(s^m, p^m)|``, so the two parts carry
    different information."""
    return _mean_over_modalities(F.cosine_similarity(shared, specific, dim=-1).abs(), present)


def margin_loss(shared: torch.Tensor, classes: torch.Tensor, present: torch.Tensor, margin: float) -> torch.Tensor:
    """``L_mar``: mean over triplets ``(i, j, k)`` of ``max(0, margin - cos(s_i, s_j) + cos(s_i, s_k))``.

    Nodes are (modality, sample) pairs of the shared features ``shared`` ``(M, B, H)``; a triplet has the
    positive ``j`` of the anchor's class in *another* modality and the negative ``k`` of another class in
    the anchor's *own* modality (the paper's set ``m_i != m_j, m_i = m_k, c_i = c_j, c_i != c_k``): the
    shared space groups by emotion, not by modality. Absent (modality, sample) nodes take no part. 0 when
    the batch holds no triplet (e.g. one class only).

    There are ``O(M^2 B^3)`` triplets; for a fixed anchor and positive ``p`` the hinge is active exactly for
    the negatives ``n > p - margin``, so with the anchor's negatives sorted the sum over them is a count
    times ``margin - p`` plus a prefix sum: ``O(M^2 B^2 log B)`` and no cube in memory.
    """
    num_modalities, batch_size, _ = shared.shape
    unit = F.normalize(shared, dim=-1)
    cos = torch.einsum("mbh,nch->mbnc", unit, unit)  # cos[m, b, n, c] = cos(s^m_b, s^n_c)
    valid = present.bool()
    same_class = classes[:, None] == classes[None, :]  # (B, B)
    never = -(2.0 + abs(margin))  # below every threshold p - margin: a non-negative never counts
    total = shared.sum() * 0.0
    count = 0
    for m in range(num_modalities):
        other = [n for n in range(num_modalities) if n != m]
        neg_mask = ~same_class & valid[m][None, :] & valid[m][:, None]  # (anchor, negative)
        positives = cos[m][:, other].reshape(batch_size, -1)  # (anchor, (M-1) B)
        pos_mask = ((same_class[:, None, :] & valid[other][None]) & valid[m][:, None, None]).reshape(batch_size, -1)
        negatives = torch.where(neg_mask, cos[m, :, m], torch.full_like(cos[m, :, m], never))
        descending, _ = negatives.sort(dim=-1, descending=True)
        prefix = F.pad(descending.cumsum(dim=-1), (1, 0))  # prefix[a, c] = sum of the c largest
        threshold = (positives - margin).detach()
        active = batch_size - torch.searchsorted(descending.detach().flip(-1).contiguous(), threshold.contiguous(),
                                                 right=True)  # negatives > p - margin
        hinge_sum = active * (margin - positives) + prefix.gather(1, active)
        total = total + (hinge_sum * pos_mask).sum()
        count += int((pos_mask.sum(dim=1) * neg_mask.sum(dim=1)).sum())
    return total / max(count, 1)


def graph_distillation_loss(logits: torch.Tensor, edge_weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """``L_dtl = ||W (.) E||_1`` of one graph, summed over edges and averaged over the batch.

    ``logits`` ``(M, B, C)`` are the node outputs, ``edge_weights`` ``(B, M, M)`` the weight of the edge
    source ``i`` -> target ``j`` at ``[b, j, i]``, ``present`` ``(M, B)``. ``E[b, j, i]`` is the L1
    distance between the target's logits and the (detached: the source teaches, it is not pulled)
    source's logits. Edges into an absent target count 0 (the weights already give absent sources 0)."""
    target = logits.permute(1, 0, 2)[:, :, None, :]  # (B, M, 1, C)
    source = logits.detach().permute(1, 0, 2)[:, None, :, :]  # (B, 1, M, C)
    distance = (target - source).abs().sum(dim=-1)  # (B, M_target, M_source)
    weighted = edge_weights * distance * present.T[:, :, None].to(distance.dtype)
    return weighted.sum() / max(logits.shape[1], 1)


class GraphDistillationUnit(nn.Module):
    """A GD-unit's learned edges: ``w_{i->j} = softmax_i(W_edge [z_j, z_i])`` per sample, where
    ``z = [W_logit logits, W_repr repr]`` embeds a node's output and representation."""

    def __init__(self, num_outputs: int, hidden: int, edge_hidden: int):
        super().__init__()
        self.embed_logits = nn.Linear(num_outputs, edge_hidden)
        self.embed_repr = nn.Linear(hidden, edge_hidden)
        self.edge = nn.Linear(4 * edge_hidden, 1)

    def forward(self, logits: torch.Tensor, reprs: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(M, B, C)``, ``reprs`` ``(M, B, H)``, ``present`` ``(M, B)`` -> weights ``(B, M, M)``
        at ``[b, target, source]``; each target's weights sum to 1 over its present sources (all 0 when
        none is present)."""
        num_modalities = logits.shape[0]
        z = torch.cat([self.embed_logits(logits), self.embed_repr(reprs)], dim=-1).transpose(0, 1)  # (B, M, 2g)
        pairs = torch.cat([z[:, :, None, :].expand(-1, -1, num_modalities, -1),
                           z[:, None, :, :].expand(-1, num_modalities, -1, -1)], dim=-1)
        scores = self.edge(pairs).squeeze(-1)  # (B, M_target, M_source)
        no_self = ~torch.eye(num_modalities, dtype=torch.bool, device=scores.device)
        allowed = no_self[None] & present.T[:, None, :].bool()
        scores = scores.masked_fill(~allowed, float("-inf"))
        weights = scores.softmax(dim=-1)
        return torch.nan_to_num(weights, nan=0.0)  # a target with no present source: all -inf -> NaN -> 0


class NodeHead(nn.Module):
    """A graph node's head (the released code's ``proj1 / proj2 / out_layer``): ``repr = W1 x``,
    ``h = x + W2 dropout(relu(repr))``, ``logits = W_out h``."""

    def __init__(self, hidden: int, num_outputs: int, dropout: float):
        super().__init__()
        self.proj1 = nn.Linear(hidden, hidden)
        self.proj2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, num_outputs)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        representation = self.proj1(x)
        hidden = x + self.proj2(self.dropout(F.relu(representation)))
        return self.out(hidden), representation


class CrossModalEnhancer(nn.Module):
    """Each modality's specific feature attends to the other modalities' (its own key set per target, as
    the released code has one cross-modal transformer per ordered pair), then residual + LayerNorm and a
    feed-forward block."""

    def __init__(self, names: list[str], hidden: int, num_heads: int, dropout: float):
        super().__init__()
        self.names = names
        self.attention = nn.ModuleDict(
            {m: nn.MultiheadAttention(hidden, num_heads, dropout=dropout, batch_first=True) for m in names})
        self.norm1 = nn.ModuleDict({m: nn.LayerNorm(hidden) for m in names})
        self.feed_forward = nn.ModuleDict({m: nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(),
                                                            nn.Dropout(dropout), nn.Linear(2 * hidden, hidden))
                                           for m in names})
        self.norm2 = nn.ModuleDict({m: nn.LayerNorm(hidden) for m in names})

    def forward(self, specific: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``specific`` ``(M, B, H)``, ``present`` ``(M, B)`` -> enhanced ``(M, B, H)``."""
        out = []
        for m, name in enumerate(self.names):
            others = [n for n in range(len(self.names)) if n != m]
            keys = specific[others].transpose(0, 1)  # (B, M-1, H)
            ignore = ~present[others].T.bool()  # (B, M-1)
            any_other = ~ignore.all(dim=1)
            # A fully masked attention row is NaN: let it attend to everything, then zero its message.
            ignore = ignore & any_other[:, None]
            message, _ = self.attention[name](specific[m][:, None, :], keys, keys, key_padding_mask=ignore,
                                              need_weights=False)
            message = message[:, 0, :] * any_other[:, None].to(message.dtype)
            h = self.norm1[name](specific[m] + message)
            out.append(self.norm2[name](h + self.feed_forward[name](h)))
        return torch.stack(out)


@register_baseline("dmd")
class DMD(BaselineModel):
    """DMD on pooled features; see the module docstring and ``docs/baselines.md``."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "modalities": None,  # None: every modality in feature_dims (at least two)
        "hidden": 128,  # common width of the projected, shared and specific features
        "gamma": 0.1,  # weight of L_mar + L_ort inside L_dec (released code: 0.1)
        "lambda1": 0.1,  # weight of L_dec (released code: 0.1)
        "lambda2": 0.05,  # weight of L_dtl (released code: 0.05)
        "margin": 0.1,  # L_mar margin on cosine similarity
        "num_heads": 4,
        "dropout": 0.1,
        "edge_hidden": 32,  # width of a GD-unit's node embedding (the code's gd_size)
    }

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int, *,
                 task: Literal["classification", "regression"] = "classification", **options: Any):
        super().__init__(feature_dims, num_classes, task=task, **options)
        if task not in ("classification", "regression"):
            raise ConfigError(f"dmd: task must be 'classification' or 'regression', got {task!r}")
        if task == "classification" and self.num_classes < 2:
            raise ConfigError(f"dmd needs num_classes >= 2 for classification, got {self.num_classes}")
        opts = self.options
        names = opts["modalities"]
        if names is None:
            names = list(self.feature_dims)
        elif isinstance(names, str):
            names = [names]
        self.modalities = [str(m) for m in names]
        unknown = [m for m in self.modalities if m not in self.feature_dims]
        if unknown:
            raise ConfigError(f"dmd: modalities {unknown} are not among the features {sorted(self.feature_dims)}")
        if len(set(self.modalities)) < 2:
            raise ConfigError(f"dmd distils between modalities and needs at least two, got {self.modalities}",
                              hint="extract a second encoder's features, or use method 'hlm12erc'")
        hidden, heads = int(opts["hidden"]), int(opts["num_heads"])
        if hidden < 1 or heads < 1 or hidden % heads:
            raise ConfigError(f"dmd: hidden ({hidden}) must be a positive multiple of num_heads ({heads})")
        dropout = float(opts["dropout"])
        outputs = self.num_classes if task == "classification" else 1
        num_modalities = len(self.modalities)

        self.input_projections = nn.ModuleDict(
            {m: nn.Linear(self.feature_dims[m], hidden) for m in self.modalities})
        self.input_dropout = nn.Dropout(dropout)
        # Decoupling: linear maps, as the released code's kernel-1 convolutions without bias.
        self.shared_encoder = nn.Linear(hidden, hidden, bias=False)
        self.specific_encoders = nn.ModuleDict({m: nn.Linear(hidden, hidden, bias=False) for m in self.modalities})
        self.decoders = nn.ModuleDict({m: nn.Linear(2 * hidden, hidden, bias=False) for m in self.modalities})
        # Homogeneous graph (shared features).
        self.homo_heads = nn.ModuleDict({m: NodeHead(hidden, outputs, dropout) for m in self.modalities})
        self.homo_edges = GraphDistillationUnit(outputs, hidden, int(opts["edge_hidden"]))
        self.shared_fusion = NodeHead(num_modalities * hidden, outputs, dropout)
        # Heterogeneous graph (specific features, cross-modally enhanced).
        self.enhancer = CrossModalEnhancer(self.modalities, hidden, heads, dropout)
        self.hetero_heads = nn.ModuleDict({m: NodeHead(hidden, outputs, dropout) for m in self.modalities})
        self.hetero_edges = GraphDistillationUnit(outputs, hidden, int(opts["edge_hidden"]))
        # Final: sigmoid-gated features of each part, concatenated (released code's weight_* and proj1/proj2).
        self.gates = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in self.modalities})
        self.shared_gate = nn.Linear(num_modalities * hidden, num_modalities * hidden)
        self.head = NodeHead(2 * num_modalities * hidden, outputs, dropout)

    # -- helpers ------------------------------------------------------------------------------------
    def _inputs(self, batch: BaselineBatch) -> tuple[list[torch.Tensor], torch.Tensor]:
        xs, present = [], []
        for name in self.modalities:
            if name not in batch.features:
                raise ConfigError(f"dmd: the batch has no '{name}' features (it has {sorted(batch.features)})",
                                  hint="train and predict on the same feature encoders")
            x = batch.features[name]
            mask = batch.present.get(name)
            xs.append(x)
            present.append(torch.ones(len(x), dtype=torch.bool, device=x.device) if mask is None
                           else mask.to(device=x.device, dtype=torch.bool))
        return xs, torch.stack(present)

    def _classes_for_margin(self, labels: torch.Tensor) -> torch.Tensor:
        """Class ids for L_mar: the label (classification) or the score rounded on the 7-point scale
        [-3, 3] (regression, the Acc-7 bins), so 'same class' means the same sentiment grade."""
        if self.task == "classification":
            return labels.long()
        return labels.float().clamp(-3.0, 3.0).round().long()

    def _task_loss(self, output: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.task == "classification":
            per_row = F.cross_entropy(output, labels.long(), reduction="none")
        else:
            per_row = (output.squeeze(-1) - labels.float()).abs()
        return per_row.mean() if mask is None else _masked_mean(per_row, mask)

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, batch: BaselineBatch) -> BaselineOutput:
        xs, present = self._inputs(batch)  # present (M, B)
        presence = present.to(xs[0].dtype)[..., None]  # (M, B, 1)
        projected = torch.stack([self.input_dropout(self.input_projections[m](x))
                                 for m, x in zip(self.modalities, xs, strict=True)])  # (M, B, H)
        shared = self.shared_encoder(projected)
        specific = torch.stack([self.specific_encoders[m](projected[i]) for i, m in enumerate(self.modalities)])
        reconstructed = torch.stack([self.decoders[m](torch.cat([shared[i], specific[i]], dim=-1))
                                     for i, m in enumerate(self.modalities)])
        reencoded = torch.stack([self.specific_encoders[m](reconstructed[i]) for i, m in enumerate(self.modalities)])

        homo = [self.homo_heads[m](shared[i]) for i, m in enumerate(self.modalities)]
        homo_logits = torch.stack([h[0] for h in homo])
        homo_reprs = torch.stack([h[1] for h in homo])
        # An absent modality's row is zeros in, not a signal: it contributes nothing to the fused parts.
        shared_cat = (shared * presence).transpose(0, 1).reshape(len(xs[0]), -1)
        shared_logits, _ = self.shared_fusion(shared_cat)

        enhanced = self.enhancer(specific, present)
        hetero = [self.hetero_heads[m](enhanced[i]) for i, m in enumerate(self.modalities)]
        hetero_logits = torch.stack([h[0] for h in hetero])
        hetero_reprs = torch.stack([h[1] for h in hetero])

        gated = [torch.sigmoid(self.gates[m](enhanced[i])) * presence[i] for i, m in enumerate(self.modalities)]
        fused = torch.cat([*gated, torch.sigmoid(self.shared_gate(shared_cat))], dim=-1)
        output, _ = self.head(fused)
        result = (BaselineOutput(logits=output) if self.task == "classification"
                  else BaselineOutput(prediction=output.squeeze(-1)))
        if batch.labels is None:
            return result

        labels = batch.labels
        opts = self.options
        task_main = self._task_loss(output, labels)
        node_terms = [self._task_loss(node, labels, present[i])
                      for logits in (homo_logits, hetero_logits) for i, node in enumerate(logits)]
        task_aux = torch.stack([*node_terms, self._task_loss(shared_logits, labels)]).sum()

        rec = reconstruction_loss(reconstructed, projected, present)
        cyc = cycle_loss(reencoded, specific, present)
        mar = margin_loss(shared, self._classes_for_margin(labels), present, float(opts["margin"]))
        ort = orthogonality_loss(shared, specific, present)
        dec = rec + cyc + float(opts["gamma"]) * (mar + ort)

        homo_weights = self.homo_edges(homo_logits, homo_reprs, present)
        hetero_weights = self.hetero_edges(hetero_logits, hetero_reprs, present)
        dtl_homo = graph_distillation_loss(homo_logits, homo_weights, present)
        dtl_hetero = graph_distillation_loss(hetero_logits, hetero_weights, present)
        dtl = dtl_homo + dtl_hetero

        result.loss = task_main + task_aux + float(opts["lambda1"]) * dec + float(opts["lambda2"]) * dtl
        result.parts = {"task": task_main.item(), "task_nodes": task_aux.item(), "rec": rec.item(),
                        "cyc": cyc.item(), "mar": mar.item(), "ort": ort.item(), "dtl_homo": dtl_homo.item(),
                        "dtl_hetero": dtl_hetero.item()}
        return result
