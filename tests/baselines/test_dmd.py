"""DMD: decoupling and distillation losses against explicit formulas, the learned graph edges, absent
modalities, and learning a task only fusion can solve (classification and regression)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from emollm.baselines.base import BaselineBatch
from emollm.baselines.dmd import (
    DMD,
    GraphDistillationUnit,
    cycle_loss,
    graph_distillation_loss,
    margin_loss,
    orthogonality_loss,
    reconstruction_loss,
)
from emollm.errors import ConfigError
from emollm.testing.synthetic import fusion_task, subset

DIMS = {"text": 8, "audio": 8, "visual": 8}



# -- decoupling losses -------------------------------------------------------------------------------
# Two modalities, three samples, width 2; sample 2 of modality 1 is absent.
PRESENT = torch.tensor([[True, True, True], [True, True, False]])


def test_reconstruction_and_cycle_losses_by_hand() -> None:
    target = torch.zeros(2, 3, 2)
    recon = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [0.0, 0.0]],
                          [[0.0, 3.0], [1.0, 1.0], [100.0, 100.0]]])  # the absent row is ignored
    # modality 0: per-row MSE (1, 2, 0) -> 1; modality 1: (4.5, 1) -> 2.75; mean 1.875
    assert reconstruction_loss(recon, target, PRESENT).item() == pytest.approx(1.875)
    assert cycle_loss(recon, target, PRESENT).item() == pytest.approx(1.875)  # the same squared error
    # A modality absent in every row drops out of the mean instead of pulling it to 0.
    only_first = torch.tensor([[True, True, True], [False, False, False]])
    assert reconstruction_loss(recon, target, only_first).item() == pytest.approx(1.0)


def test_orthogonality_loss_by_hand() -> None:
    shared = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]],
                           [[0.0, 2.0], [3.0, 0.0], [1.0, 0.0]]])
    specific = torch.tensor([[[0.0, 1.0], [-1.0, -1.0], [1.0, 1.0]],
                             [[0.0, -5.0], [1.0, 1.0], [1.0, 0.0]]])
    # |cos|: modality 0 (0, 1, 1/sqrt2) -> mean (1 + 0.7071) / 3; modality 1 (1, 1/sqrt2) (third absent)
    expected = ((1 + 1 / math.sqrt(2)) / 3 + (1 + 1 / math.sqrt(2)) / 2) / 2
    assert orthogonality_loss(shared, specific, PRESENT).item() == pytest.approx(expected, rel=1e-6)


def test_margin_loss_by_hand() -> None:
    # Modalities 0 and 1, samples of class 0 and 1. Triplets (anchor, positive in the other modality with
    # the same class, negative in the anchor's modality with the other class):
    #   (0,0): pos (1,0) cos 0, neg (0,1) cos 0 -> relu(0.1 - 0 + 0) = 0.1
    #   (0,1): pos (1,1) cos 1, neg (0,0) cos 0 -> 0
    #   (1,0): pos (0,0) cos 0, neg (1,1) cos 1 -> 1.1
    #   (1,1): pos (0,1) cos 1, neg (1,0) cos 1 -> 0.1
    shared = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],
                           [[0.0, 1.0], [0.0, 2.0]]])
    classes = torch.tensor([0, 1])
    present = torch.ones(2, 2, dtype=torch.bool)
    assert margin_loss(shared, classes, present, margin=0.1).item() == pytest.approx(1.3 / 4)
    # One class only: no triplet, no loss.
    assert margin_loss(shared, torch.tensor([1, 1]), present, margin=0.1).item() == 0.0


def _margin_brute_force(shared: np.ndarray, classes: np.ndarray, present: np.ndarray, margin: float) -> float:
    m_count, b_count, _ = shared.shape
    nodes = [(m, b) for m in range(m_count) for b in range(b_count) if present[m, b]]

    def cos(u, v):
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    terms = []
    for (mi, bi), (mj, bj), (mk, bk) in itertools.product(nodes, repeat=3):
        if mi != mj and mi == mk and classes[bi] == classes[bj] and classes[bi] != classes[bk]:
            a = shared[mi, bi]
            terms.append(max(0.0, margin - cos(a, shared[mj, bj]) + cos(a, shared[mk, bk])))
    return float(np.mean(terms)) if terms else 0.0


@pytest.mark.parametrize("seed", range(3))
def test_margin_loss_matches_the_triplet_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((3, 7, 4))
    classes = rng.integers(0, 3, 7)
    present = rng.random((3, 7)) > 0.2
    expected = _margin_brute_force(shared, classes, present, margin=0.3)
    got = margin_loss(torch.tensor(shared), torch.tensor(classes), torch.tensor(present), margin=0.3)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_margin_loss_gradient_matches_the_dense_form() -> None:
    """The sorted (prefix-sum) evaluation must give the same gradient as summing every triplet."""
    torch.manual_seed(0)
    shared = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    classes = torch.tensor([0, 1, 0, 1, 1])
    present = torch.ones(2, 5, dtype=torch.bool)
    margin_loss(shared, classes, present, margin=0.5).backward()
    fast = shared.grad.clone()
    shared.grad = None
    unit = torch.nn.functional.normalize(shared, dim=-1)
    terms = []
    for mi, bi, bj, bk in itertools.product(range(2), range(5), range(5), range(5)):
        if classes[bi] == classes[bj] and classes[bi] != classes[bk]:
            a, p, n = unit[mi, bi], unit[1 - mi, bj], unit[mi, bk]
            terms.append(torch.relu(0.5 - a @ p + a @ n))
    torch.stack(terms).mean().backward()
    assert torch.allclose(fast, shared.grad, atol=1e-10)


# -- graph distillation ------------------------------------------------------------------------------
def test_graph_distillation_loss_by_hand() -> None:
    # Two nodes, one sample: each node's only source has weight 1; E = |1 - 0| + |0 - 2| = 3 both ways.
    logits = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])
    weights = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    present = torch.ones(2, 1, dtype=torch.bool)
    assert graph_distillation_loss(logits, weights, present).item() == pytest.approx(6.0)


def test_graph_distillation_loss_explicit_formula_and_detached_sources() -> None:
    rng = np.random.default_rng(0)
    logits_np = rng.standard_normal((3, 4, 2))  # (M, B, C)
    weights_np = rng.random((4, 3, 3))
    for b in range(4):
        np.fill_diagonal(weights_np[b], 0.0)
    present_np = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 0]], dtype=bool)
    expected = sum(weights_np[b, j, i] * np.abs(logits_np[j, b] - logits_np[i, b]).sum()
                   for b in range(4) for j in range(3) for i in range(3) if present_np[j, b]) / 4
    logits = torch.tensor(logits_np, requires_grad=True)
    loss = graph_distillation_loss(logits, torch.tensor(weights_np), torch.tensor(present_np))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Only targets are pulled: a node no edge points to (all its incoming weights 0) gets no gradient.
    weights_np[:, 0, :] = 0.0
    logits.grad = None
    graph_distillation_loss(logits, torch.tensor(weights_np), torch.tensor(present_np)).backward()
    assert torch.all(logits.grad[0] == 0) and torch.any(logits.grad[1] != 0)


def test_edge_weights_are_a_softmax_over_present_sources() -> None:
    torch.manual_seed(0)
    unit = GraphDistillationUnit(num_outputs=2, hidden=4, edge_hidden=3)
    present = torch.tensor([[True, True, False], [True, False, False], [False, True, False]])  # (M=3, B=3)
    weights = unit(torch.randn(3, 3, 2), torch.randn(3, 3, 4), present)  # (B, target, source)
    assert torch.all(weights.diagonal(dim1=1, dim2=2) == 0)
    # sample 0: all present -> each target's row sums to 1
    assert torch.allclose(weights[0].sum(dim=-1), torch.ones(3))
    # sample 1: modality 1 absent -> never a source; targets 0 and 2 have one source (2 and 0)
    assert torch.all(weights[1, :, 1] == 0)
    assert weights[1, 0, 2].item() == pytest.approx(1.0) and weights[1, 2, 0].item() == pytest.approx(1.0)
    # sample 2: nothing present -> no edges at all
    assert torch.all(weights[2] == 0)


# -- the model ---------------------------------------------------------------------------------------
def test_forward_shapes_parts_and_prediction() -> None:
    torch.manual_seed(0)
    batch = fusion_task(12, DIMS, num_classes=3)
    model = DMD(DIMS, 3, hidden=16, num_heads=2)
    out = model(batch)
    assert out.logits.shape == (12, 3) and out.prediction is None
    assert set(out.parts) == {"task", "task_nodes", "rec", "cyc", "mar", "ort", "dtl_homo", "dtl_hetero"}
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    reg = DMD(DIMS, 0, task="regression", hidden=16, num_heads=2)
    batch = fusion_task(12, DIMS, task="regression")
    assert reg(batch).prediction.shape == (12,)
    batch.labels = None
    out = reg.eval()(batch)
    assert out.loss is None and out.logits is None and out.prediction.shape == (12,)


def test_absent_modalities_stay_finite() -> None:
    torch.manual_seed(0)
    for task in ("classification", "regression"):
        batch = fusion_task(16, DIMS, task=task, missing=0.5, seed=2)
        for name in DIMS:  # a row with nothing present, a row with one modality only
            batch.present[name][0] = False
            batch.features[name][0] = 0.0
        for name in ("audio", "visual"):
            batch.present[name][1] = False
            batch.features[name][1] = 0.0
        model = DMD(DIMS, 2, task=task, hidden=16, num_heads=2)
        out = model(batch)
        assert torch.isfinite(out.loss) and all(math.isfinite(v) for v in out.parts.values())
        assert torch.isfinite(out.logits if task == "classification" else out.prediction).all()
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="at least two"):
        DMD({"text": 4}, 2)
    with pytest.raises(ConfigError, match="not among the features"):
        DMD(DIMS, 2, modalities=["text", "face"])
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        DMD(DIMS, 2, hidden=10, num_heads=4)
    with pytest.raises(ConfigError, match="unknown option"):
        DMD(DIMS, 2, alpha=1.0)
    with pytest.raises(ConfigError, match="no '.*' features"):
        DMD(DIMS, 2, hidden=8, num_heads=2)(BaselineBatch({"text": torch.zeros(2, 8)}, {}))


# -- learning ----------------------------------------------------------------------------------------
def _fit(model: DMD, train: BaselineBatch, epochs: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for rows in torch.randperm(len(train)).split(128):
            loss = model(subset(train, rows)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def test_learns_the_fusion_task() -> None:
    torch.manual_seed(0)
    data = fusion_task(3000, DIMS, num_classes=2, seed=0)
    train, test = subset(data, slice(0, 2000)), subset(data, slice(2000, None))
    model = DMD(DIMS, 2, hidden=32, num_heads=2, dropout=0.0)
    _fit(model, train, epochs=6)
    with torch.no_grad():
        accuracy = (model(test).logits.argmax(dim=1) == test.labels).float().mean().item()
    assert accuracy >= 0.85


def test_learns_the_regression_fusion_task() -> None:
    torch.manual_seed(0)
    data = fusion_task(3000, DIMS, task="regression", seed=1)
    train, test = subset(data, slice(0, 2000)), subset(data, slice(2000, None))
    model = DMD(DIMS, 0, task="regression", hidden=32, num_heads=2, dropout=0.0)
    _fit(model, train, epochs=6)
    with torch.no_grad():
        mae = (model(test).prediction - test.labels).abs().mean().item()
    constant_mae = (test.labels - train.labels.median()).abs().mean().item()
    assert mae < 0.5 * constant_mae
