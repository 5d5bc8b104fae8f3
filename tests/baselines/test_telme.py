"""TelME: its losses against explicit formulas, the ASF shift bound, stage freezing, masking of absent
modalities, and that the three stages together solve a task only fusion can solve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from emollm.baselines.base import BaselineBatch
from emollm.baselines.telme import (
    ModalityShiftFusion,
    TelME,
    modality_shift_weight,
    relation_losses,
    similarity_distillation_loss,
)
from emollm.errors import ConfigError
from emollm.testing.synthetic import fusion_task, subset

DIMS = {"text": 8, "audio": 8, "visual": 8}



def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


# -- losses ------------------------------------------------------------------------------------------
def test_response_loss_two_classes_by_hand() -> None:
    # Two classes: every centred probability pair is (d, -d), so each correlation is exactly +-1. The
    # student ranks everything the other way round: inter = intra = tau^2 * (1 - (-1)).
    tau = 2.0
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    inter, intra = relation_losses(student, teacher, tau)
    assert inter.item() == pytest.approx(2 * tau**2)
    assert intra.item() == pytest.approx(2 * tau**2)
    same_inter, same_intra = relation_losses(teacher, teacher, tau)
    assert same_inter.item() == pytest.approx(0.0, abs=1e-6) and same_intra.item() == pytest.approx(0.0, abs=1e-6)


def test_response_loss_matches_explicit_formula() -> None:
    tau = 3.0
    zs = np.array([[2.0, -1.0, 0.5], [0.0, 1.5, -0.5], [1.0, 1.0, -2.0], [-1.0, 0.3, 0.8]])
    zt = np.array([[1.0, 0.0, 2.0], [0.5, 2.5, -1.0], [3.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    ps, pt = _softmax(zs / tau), _softmax(zt / tau)
    inter_expected = tau**2 * np.mean([1 - _pearson(ps[i], pt[i]) for i in range(4)])
    intra_expected = tau**2 * np.mean([1 - _pearson(ps[:, c], pt[:, c]) for c in range(3)])
    inter, intra = relation_losses(torch.tensor(zs), torch.tensor(zt), tau)
    assert inter.item() == pytest.approx(inter_expected, rel=1e-5)
    assert intra.item() == pytest.approx(intra_expected, rel=1e-5)


def test_response_loss_on_one_sample_has_no_intra_term() -> None:
    inter, intra = relation_losses(torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[0.0, 1.0, 2.0]]), 1.0)
    ps, pt = _softmax(np.array([[1.0, 0.0, 2.0]])), _softmax(np.array([[0.0, 1.0, 2.0]]))
    assert intra.item() == 0.0 and inter.item() == pytest.approx(1 - _pearson(ps[0], pt[0]), rel=1e-5)


def test_feature_loss_matches_explicit_formula() -> None:
    temperature = 0.5
    ft = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [2.0, 0.0, 1.0]])
    fs = np.array([[0.5, 1.0, 1.0], [1.0, -1.0, 0.0], [0.0, 2.0, 2.0]])
    nt = ft / np.linalg.norm(ft, axis=1, keepdims=True)
    ns = fs / np.linalg.norm(fs, axis=1, keepdims=True)
    p = _softmax(nt @ nt.T / temperature)  # text-text
    q = _softmax(nt @ ns.T / temperature)  # text-student
    expected = np.mean([(p[i] * (np.log(p[i]) - np.log(q[i]))).sum() for i in range(3)])
    got = similarity_distillation_loss(torch.tensor(fs), torch.tensor(ft), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # Matching the teacher up to scale costs nothing: only directions count.
    assert similarity_distillation_loss(torch.tensor(3 * ft), torch.tensor(ft), temperature).item() == pytest.approx(
        0.0, abs=1e-6)


def test_shift_weight_is_clipped_at_one() -> None:
    text = torch.tensor([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]])  # |F_T| = 5
    shift = torch.tensor([[0.1, 0.0], [6.0, 8.0], [0.0, 0.0]])  # |H| = 0.1, 10, 0
    weight = modality_shift_weight(text, shift, theta=0.1)
    # 0.1 * 5 / 0.1 = 5 -> clipped to 1; 0.1 * 5 / 10 = 0.05; |H| = 0 is taken as 1: 0.5
    assert weight.tolist() == pytest.approx([1.0, 0.05, 0.5], rel=1e-5)


def test_fusion_shift_never_exceeds_theta_of_the_text_norm() -> None:
    torch.manual_seed(0)
    theta = 0.1
    fusion = ModalityShiftFusion(hidden=8, num_heads=2, theta=theta, dropout=0.0).eval()
    fusion.norm = nn.Identity()  # expose Z = F_T + lambda * H itself
    text = torch.randn(6, 8)
    students = 50 * torch.randn(6, 2, 8)  # large students: the clip must bind
    present = torch.tensor([[True, True], [True, False], [False, True], [False, False], [True, True], [True, True]])
    fused, weight = fusion(text, students, present)
    moved = (fused - text).norm(dim=-1)
    assert torch.all(moved <= theta * text.norm(dim=-1) * (1 + 1e-4))
    assert torch.all(weight <= 1.0)
    assert torch.equal(fused[3], text[3])  # no student present: no shift


# -- stages ------------------------------------------------------------------------------------------
def _names(model: TelME, trainable: bool) -> set[str]:
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad == trainable}


def test_stage_freezing() -> None:
    model = TelME(DIMS, 3, hidden=16, num_heads=2)
    assert model.stage == "teacher"
    assert _names(model, True) == {"teacher_encoder", "teacher_head"}
    model.set_stage("students")
    assert _names(model, True) == {"student_encoders", "student_heads"}
    assert all(not p.requires_grad for p in model.teacher_encoder.parameters())
    model.set_stage("fusion")
    assert _names(model, True) == {"fusion", "fusion_head"}
    assert _names(model, False) == {"teacher_encoder", "teacher_head", "student_encoders", "student_heads"}
    # Frozen stages keep their dropout off while the stage trains.
    model.train()
    assert not model.teacher_encoder.training and not model.student_encoders.training and model.fusion.training
    with pytest.raises(ConfigError, match="no stage 'distill'"):
        model.set_stage("distill")


def test_each_stage_backpropagates_into_its_own_parameters_only() -> None:
    torch.manual_seed(0)
    batch = fusion_task(32, DIMS, num_classes=3)
    model = TelME(DIMS, 3, hidden=16, num_heads=2)
    for stage in model.stages:
        model.set_stage(stage)
        model.zero_grad(set_to_none=True)
        out = model(batch)
        out.loss.backward()
        with_grad = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad == _names(model, True), stage
        assert out.logits.shape == (32, 3)


def test_students_stage_parts_and_logits() -> None:
    torch.manual_seed(0)
    batch = fusion_task(16, DIMS)
    model = TelME(DIMS, 2, hidden=16, num_heads=2)
    model.set_stage("students")
    out = model(batch)
    assert set(out.parts) == {f"{m}_{k}" for m in ("audio", "visual") for k in ("ce", "response", "feature")}
    model.eval()
    with torch.no_grad():
        logits = model(batch).logits
        mean_students = (model.student_heads["audio"](model.student_encoders["audio"](batch.features["audio"]))
                         + model.student_heads["visual"](model.student_encoders["visual"](batch.features["visual"]))) / 2
    assert torch.allclose(logits, mean_students, atol=1e-6)


# -- absent modalities -------------------------------------------------------------------------------
def test_absent_rows_do_not_touch_the_student_losses() -> None:
    torch.manual_seed(0)
    batch = fusion_task(24, DIMS, missing=0.3, seed=3)
    model = TelME(DIMS, 2, hidden=16, num_heads=2)
    model.set_stage("students")
    model.eval()
    noisy = BaselineBatch({k: v.clone() for k, v in batch.features.items()}, batch.present, batch.labels)
    for name in ("audio", "visual"):
        absent = ~batch.present[name]
        assert absent.any()
        noisy.features[name][absent] = 100 * torch.randn(int(absent.sum()), DIMS[name])
    with torch.no_grad():
        assert model(batch).loss.item() == pytest.approx(model(noisy).loss.item(), rel=1e-6)


def test_absent_modalities_stay_finite_in_every_stage() -> None:
    torch.manual_seed(0)
    batch = fusion_task(16, DIMS, missing=0.5, seed=1)
    # One row with nothing at all, one with only text.
    for name in DIMS:
        batch.present[name][0] = False
        batch.features[name][0] = 0.0
    for name in ("audio", "visual"):
        batch.present[name][1] = False
        batch.features[name][1] = 0.0
    model = TelME(DIMS, 2, hidden=16, num_heads=2)
    for stage in model.stages:
        model.set_stage(stage)
        model.zero_grad()
        out = model(batch)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # All students absent in the whole batch: the student losses are 0, not NaN.
    for name in ("audio", "visual"):
        batch.present[name][:] = False
    model.set_stage("students")
    out = model(batch)
    assert math.isfinite(out.loss.item()) and out.parts["audio_response"] == 0.0


# -- configuration -----------------------------------------------------------------------------------
def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="classification-only"):
        TelME(DIMS, 1, task="regression")
    with pytest.raises(ConfigError, match="text_modality 'transcript'"):
        TelME(DIMS, 2, text_modality="transcript")
    with pytest.raises(ConfigError, match="at least one student"):
        TelME({"text": 4}, 2)
    with pytest.raises(ConfigError, match="not among the features"):
        TelME(DIMS, 2, student_modalities=["face"])
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        TelME(DIMS, 2, hidden=10, num_heads=4)
    with pytest.raises(ConfigError, match="unknown option"):
        TelME(DIMS, 2, gamma=1.0)


def test_predict_without_labels() -> None:
    model = TelME(DIMS, 4, hidden=16, num_heads=2, student_modalities=["audio"])
    model.set_stage("fusion")
    batch = fusion_task(5, DIMS)
    batch.labels = None
    out = model.eval()(batch)
    assert out.loss is None and out.logits.shape == (5, 4)


# -- learning ----------------------------------------------------------------------------------------
def _accuracy(model: TelME, batch: BaselineBatch) -> float:
    model.eval()
    with torch.no_grad():
        return (model(batch).logits.argmax(dim=1) == batch.labels).float().mean().item()


def test_learns_the_fusion_task() -> None:
    """The label is the XOR of a text direction and an audio direction (each alone at chance; visual is
    noise): only the fusion stage can solve it."""
    torch.manual_seed(0)
    data = fusion_task(4000, DIMS, num_classes=2, seed=0)
    train, test = subset(data, slice(0, 3000)), subset(data, slice(3000, None))
    model = TelME(DIMS, 2, hidden=64, num_heads=4, dropout=0.0)
    accuracy = {}
    for stage, epochs in (("teacher", 3), ("students", 2), ("fusion", 20)):
        model.set_stage(stage)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        for _ in range(epochs):
            model.train()
            for rows in torch.randperm(3000).split(128):
                loss = model(subset(train, rows)).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        accuracy[stage] = _accuracy(model, test)
    assert accuracy["teacher"] < 0.6 and accuracy["students"] < 0.6  # single modalities: chance
    assert accuracy["fusion"] >= 0.85, accuracy
