"""TelME (Yun et al., NAACL 2024): a text teacher distils into non-verbal students, then attention-based
modality-shifting fusion (ASF) moves the text embedding by what the students add.

On pooled features (one vector per modality and clip) the three stages are:

- ``teacher``: text MLP encoder -> embedding ``F_T`` -> head; cross-entropy.
- ``students``: one MLP encoder per non-text modality, projecting to the teacher's embedding width,
  plus a head; ``L_cls + alpha * L_response + beta * L_feature`` against the frozen teacher, where
  ``L_response`` is the DIST-style inter + intra class relation of temperature-softened probabilities
  (:func:`relation_losses`) and ``L_feature`` the KL between the text-text and text-student similarity
  distributions (:func:`similarity_distillation_loss`).
- ``fusion``: :class:`ModalityShiftFusion` over the frozen teacher and students, a new head; cross-entropy.

The logits each stage returns are its own output: the teacher's at ``teacher``, the mean of the present
students' logits at ``students`` (the teacher's for a row with no student present), the fused ones at
``fusion`` (the stage a trained model predicts in).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from emollm.baselines.base import BaselineBatch, BaselineModel, BaselineOutput, register_baseline
from emollm.errors import ConfigError

_PEARSON_EPS = 1e-8  # as DIST / TelME: keeps a constant row (zero variance) at correlation 0, not NaN


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``: ``(N,)``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + _PEARSON_EPS)


def relation_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TelME's response distillation (DIST): ``(inter, intra)`` on ``softmax(z / tau)`` of ``(B, C)`` logits.

    inter = mean over samples of ``1 - pearson(P_S[i, :], P_T[i, :])`` (the ranking of classes per sample);
    intra = mean over classes of ``1 - pearson(P_S[:, c], P_T[:, c])`` (the ranking of samples per class);
    both scaled by ``tau ** 2`` so their gradients keep their size as ``tau`` grows. The intra term needs
    two samples at least; on one it is 0.
    """
    p_student = (student_logits / temperature).softmax(dim=1)
    p_teacher = (teacher_logits / temperature).softmax(dim=1)
    scale = temperature**2
    inter = scale * (1.0 - _pearson_rows(p_student, p_teacher).mean())
    if len(p_student) < 2:
        intra = p_student.sum() * 0.0  # a correlation over one sample is undefined; keep the graph
    else:
        intra = scale * (1.0 - _pearson_rows(p_student.T, p_teacher.T).mean())
    return inter, intra


def similarity_distillation_loss(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor,
                                 temperature: float) -> torch.Tensor:
    """TelME's feature distillation: with ``F_T``, ``F_S`` L2-normalised ``(B, d)``,
    ``KL(softmax(F_T F_T^T / t) || softmax(F_T F_S^T / t))`` per row, averaged over the batch.

    The student matches how the teacher relates the samples to each other, not the teacher's
    coordinates, so a non-verbal embedding need not copy the text one."""
    teacher = F.normalize(teacher_embeddings, p=2, dim=1)
    student = F.normalize(student_embeddings, p=2, dim=1)
    target = (teacher @ teacher.T / temperature).softmax(dim=1)
    log_student = (teacher @ student.T / temperature).log_softmax(dim=1)
    return F.kl_div(log_student, target, reduction="batchmean")


def modality_shift_weight(text_embedding: torch.Tensor, shift: torch.Tensor, theta: float,
                          eps: float = 1e-6) -> torch.Tensor:
    """ASF's ``lambda = min(theta * |F_T| / |H|, 1)`` per row ``(B,)``: the non-verbal shift ``H`` may move
    the text embedding by at most ``theta`` of its norm. A zero shift (``|H| = 0``) gets the ratio
    against 1, as TelME does, so the division stays finite."""
    text_norm = text_embedding.norm(p=2, dim=-1)
    shift_norm = shift.norm(p=2, dim=-1)
    shift_norm = torch.where(shift_norm == 0, torch.ones_like(shift_norm), shift_norm)
    ratio = text_norm / (shift_norm + eps) * theta
    return torch.minimum(ratio, torch.ones_like(ratio))


class ModalityShiftFusion(nn.Module):
    """Attention-based modality-shifting fusion: ``F_att`` = multi-head attention with the text embedding
    as query over the student embeddings; gate ``g = ReLU(W1 [F_T, F_att] + b1)``; shift
    ``H = g * (W2 F_att + b2)``; ``Z = F_T + lambda * H`` (:func:`modality_shift_weight`), then LayerNorm
    and dropout as in the released code."""

    def __init__(self, hidden: int, num_heads: int, theta: float, dropout: float):
        super().__init__()
        self.attention = nn.MultiheadAttention(hidden, num_heads, dropout=dropout, batch_first=True)
        self.gate = nn.Linear(2 * hidden, hidden)
        self.shift = nn.Linear(hidden, hidden)
        self.theta = theta
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text_embedding: torch.Tensor, student_embeddings: torch.Tensor,
                student_present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``text_embedding`` ``(B, H)``, ``student_embeddings`` ``(B, S, H)``, ``student_present`` ``(B, S)``
        bool -> ``(Z (B, H), lambda (B,))``. Absent students are masked out of the attention; a row with no
        student present gets no shift (``Z = F_T``)."""
        any_student = student_present.any(dim=1)
        # A fully masked attention row is NaN: let such rows attend to everything, then drop their shift.
        ignore = ~student_present & any_student[:, None]
        attended, _ = self.attention(text_embedding[:, None, :], student_embeddings, student_embeddings,
                                     key_padding_mask=ignore, need_weights=False)
        attended = attended[:, 0, :]
        gate = F.relu(self.gate(torch.cat([text_embedding, attended], dim=-1)))
        shift = gate * self.shift(attended) * any_student[:, None].to(attended.dtype)
        weight = modality_shift_weight(text_embedding, shift, self.theta)
        fused = self.dropout(self.norm(text_embedding + weight[:, None] * shift))
        return fused, weight


def _encoder(in_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    """Pooled feature -> embedding (the trainable part above a frozen feature extractor)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``(B,)`` over the rows where ``mask``; 0 (still in the graph) when none."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


@register_baseline("telme")
class TelME(BaselineModel):
    """TelME on pooled features; see the module docstring and ``docs/baselines.md``."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "text_modality": "text",  # the teacher
        "student_modalities": None,  # None: every other modality in feature_dims
        "hidden": 256,  # embedding width of teacher and students (students project to it)
        "alpha": 1.0,  # weight of the response (logit relation) loss
        "beta": 1.0,  # weight of the feature (similarity KL) loss
        "temperature": 4.0,  # tau of the response loss (TelME's default)
        "feature_temperature": 1.0,
        "theta": 0.1,  # ASF: the shift is at most theta * |F_T| (TelME's beta_shift)
        "num_heads": 4,
        "dropout": 0.2,
    }
    stages = ("teacher", "students", "fusion")

    def __init__(self, feature_dims: Mapping[str, int], num_classes: int, *,
                 task: Literal["classification", "regression"] = "classification", **options: Any):
        super().__init__(feature_dims, num_classes, task=task, **options)
        if task != "classification":
            raise ConfigError("baseline 'telme' is classification-only: its distillation compares class "
                              "distributions (softmax relations) and has no regression form",
                              hint="use task: classification, or method 'dmd' (or 'hlm12erc') for regression")
        if self.num_classes < 2:
            raise ConfigError(f"baseline 'telme' needs num_classes >= 2, got {self.num_classes}")
        opts = self.options
        self.text_modality = str(opts["text_modality"])
        if self.text_modality not in self.feature_dims:
            raise ConfigError(f"telme: text_modality '{self.text_modality}' is not among the features "
                              f"{sorted(self.feature_dims)}",
                              hint="set options.text_modality to the modality that holds the text features")
        students = opts["student_modalities"]
        if students is None:
            students = [m for m in self.feature_dims if m != self.text_modality]
        elif isinstance(students, str):
            students = [students]
        self.student_modalities = [str(m) for m in students]
        unknown = [m for m in self.student_modalities if m not in self.feature_dims]
        if unknown:
            raise ConfigError(f"telme: student modalities {unknown} are not among the features "
                              f"{sorted(self.feature_dims)}")
        if self.text_modality in self.student_modalities:
            raise ConfigError(f"telme: '{self.text_modality}' is the teacher and cannot also be a student")
        if not self.student_modalities:
            raise ConfigError("telme needs at least one student modality besides the text teacher",
                              hint=f"features present: {sorted(self.feature_dims)}")
        hidden, heads = int(opts["hidden"]), int(opts["num_heads"])
        if hidden < 1 or heads < 1 or hidden % heads:
            raise ConfigError(f"telme: hidden ({hidden}) must be a positive multiple of num_heads ({heads})")
        for key in ("temperature", "feature_temperature"):
            if float(opts[key]) <= 0:
                raise ConfigError(f"telme: {key} must be > 0, got {opts[key]}")
        dropout = float(opts["dropout"])

        self.teacher_encoder = _encoder(self.feature_dims[self.text_modality], hidden, dropout)
        self.teacher_head = nn.Linear(hidden, self.num_classes)
        self.student_encoders = nn.ModuleDict(
            {m: _encoder(self.feature_dims[m], hidden, dropout) for m in self.student_modalities})
        self.student_heads = nn.ModuleDict({m: nn.Linear(hidden, self.num_classes) for m in self.student_modalities})
        self.fusion = ModalityShiftFusion(hidden, heads, float(opts["theta"]), dropout)
        self.fusion_head = nn.Linear(hidden, self.num_classes)
        self.set_stage(self.stage)

    # -- stages -------------------------------------------------------------------------------------
    def _stage_modules(self, stage: str) -> list[nn.Module]:
        return {
            "teacher": [self.teacher_encoder, self.teacher_head],
            "students": [self.student_encoders, self.student_heads],
            "fusion": [self.fusion, self.fusion_head],
        }[stage]

    def _frozen_modules(self) -> list[nn.Module]:
        done = self.stages[: self.stages.index(self.stage)]
        return [module for stage in done for module in self._stage_modules(stage)]

    def set_stage(self, stage: str) -> None:
        super().set_stage(stage)
        self.requires_grad_(False)
        for module in self._stage_modules(stage):
            module.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> TelME:
        """Frozen earlier stages stay in eval mode: their dropout would only add noise to the targets
        (the teacher's logits) and inputs (the embeddings) of the stage being trained."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
        return self

    # -- forward ------------------------------------------------------------------------------------
    def _inputs(self, batch: BaselineBatch, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in batch.features:
            raise ConfigError(f"telme: the batch has no '{name}' features (it has {sorted(batch.features)})",
                              hint="train and predict on the same feature encoders")
        x = batch.features[name]
        present = batch.present.get(name)
        if present is None:
            present = torch.ones(len(x), dtype=torch.bool, device=x.device)
        return x, present.to(device=x.device, dtype=torch.bool)

    def _teacher(self, batch: BaselineBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, present = self._inputs(batch, self.text_modality)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.stage == "teacher"):
            embedding = self.teacher_encoder(x)
            logits = self.teacher_head(embedding)
        return embedding, logits, present

    def forward(self, batch: BaselineBatch) -> BaselineOutput:
        if self.stage == "teacher":
            return self._forward_teacher(batch)
        if self.stage == "students":
            return self._forward_students(batch)
        return self._forward_fusion(batch)

    def _forward_teacher(self, batch: BaselineBatch) -> BaselineOutput:
        _, logits, text_present = self._teacher(batch)
        if batch.labels is None:
            return BaselineOutput(logits=logits)
        # A clip without text teaches the text model nothing.
        ce = _masked_mean(F.cross_entropy(logits, batch.labels, reduction="none"), text_present)
        return BaselineOutput(logits=logits, loss=ce, parts={"ce": ce.item()})

    def _forward_students(self, batch: BaselineBatch) -> BaselineOutput:
        teacher_embedding, teacher_logits, text_present = self._teacher(batch)
        opts = self.options
        logits_sum = torch.zeros_like(teacher_logits)
        count = torch.zeros(len(teacher_logits), device=teacher_logits.device)
        loss, parts = None, {}
        for name in self.student_modalities:
            x, present = self._inputs(batch, name)
            embedding = self.student_encoders[name](x)
            logits = self.student_heads[name](embedding)
            logits_sum = logits_sum + logits * present[:, None]
            count = count + present
            if batch.labels is None:
                continue
            # Absent rows hold zeros, not a signal: they train neither the class loss nor the imitation,
            # and a row can only imitate the teacher where the teacher saw text.
            ce = _masked_mean(F.cross_entropy(logits, batch.labels, reduction="none"), present)
            pair = present & text_present
            if int(pair.sum()) > 0:
                inter, intra = relation_losses(logits[pair], teacher_logits[pair], float(opts["temperature"]))
                response = inter + intra
                feature = similarity_distillation_loss(embedding[pair], teacher_embedding[pair],
                                                       float(opts["feature_temperature"]))
            else:
                response = feature = logits.sum() * 0.0
            term = ce + float(opts["alpha"]) * response + float(opts["beta"]) * feature
            loss = term if loss is None else loss + term  # independent students: the sum trains each alone
            parts.update({f"{name}_ce": ce.item(), f"{name}_response": response.item(),
                          f"{name}_feature": feature.item()})
        has_student = count > 0
        mean_logits = logits_sum / count.clamp(min=1.0)[:, None]
        out_logits = torch.where(has_student[:, None], mean_logits, teacher_logits)
        return BaselineOutput(logits=out_logits, loss=loss, parts=parts)

    def _forward_fusion(self, batch: BaselineBatch) -> BaselineOutput:
        teacher_embedding, _, _ = self._teacher(batch)
        embeddings, presents = [], []
        with torch.no_grad():  # the students are frozen at this stage
            for name in self.student_modalities:
                x, present = self._inputs(batch, name)
                embeddings.append(self.student_encoders[name](x))
                presents.append(present)
        fused, weight = self.fusion(teacher_embedding, torch.stack(embeddings, dim=1), torch.stack(presents, dim=1))
        logits = self.fusion_head(fused)
        if batch.labels is None:
            return BaselineOutput(logits=logits)
        ce = F.cross_entropy(logits, batch.labels)
        return BaselineOutput(logits=logits, loss=ce, parts={"ce": ce.item(), "shift_weight": weight.mean().item()})
