"""The synthetic fusion task: every single modality is at chance, the first two together are not."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.neural_network import MLPClassifier, MLPRegressor

from emollm.errors import ConfigError
from emollm.testing.synthetic import fusion_task, subset

DIMS = {"text": 8, "audio": 8, "visual": 8}
N_TRAIN = 2250


def _knn_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """A nonparametric check (it finds any dependence given enough data, and fast): for single
    modalities, where the claim is that nothing at all is there to find."""
    return float(KNeighborsClassifier(25).fit(x[:N_TRAIN], y[:N_TRAIN]).score(x[N_TRAIN:], y[N_TRAIN:]))


def _mlp_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x[:N_TRAIN], y[:N_TRAIN])
    return float(clf.score(x[N_TRAIN:], y[N_TRAIN:]))


def _knn_mae(x: np.ndarray, y: np.ndarray) -> float:
    reg = KNeighborsRegressor(25).fit(x[:N_TRAIN], y[:N_TRAIN])
    return float(np.abs(reg.predict(x[N_TRAIN:]) - y[N_TRAIN:]).mean())


def _mlp_mae(x: np.ndarray, y: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        reg = MLPRegressor(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x[:N_TRAIN], y[:N_TRAIN])
    return float(np.abs(reg.predict(x[N_TRAIN:]) - y[N_TRAIN:]).mean())


def test_batch_layout_and_determinism() -> None:
    batch = fusion_task(50, DIMS, num_classes=3, seed=4)
    assert {k: tuple(v.shape) for k, v in batch.features.items()} == {"text": (50, 8), "audio": (50, 8),
                                                                       "visual": (50, 8)}
    assert all(v.dtype == torch.float32 for v in batch.features.values())
    assert all(v.dtype == torch.bool and bool(v.all()) for v in batch.present.values())
    assert batch.labels.dtype == torch.long and set(batch.labels.tolist()) <= {0, 1, 2}
    assert len(batch.ids) == 50 and len(set(batch.ids)) == 50
    again = fusion_task(50, DIMS, num_classes=3, seed=4)
    assert torch.equal(batch.labels, again.labels) and torch.equal(batch.features["audio"], again.features["audio"])
    other = fusion_task(50, DIMS, num_classes=3, seed=5)
    assert not torch.equal(batch.features["audio"], other.features["audio"])


def test_classification_and_regression_share_features() -> None:
    """One seed, one feature set: the two-class label is the sign pattern of the score (XOR)."""
    classes = fusion_task(500, DIMS, num_classes=2, seed=7)
    scores = fusion_task(500, DIMS, task="regression", seed=7)
    assert all(torch.equal(classes.features[k], scores.features[k]) for k in DIMS)
    assert torch.equal(classes.labels, (scores.labels < 0).long())


def test_classes_are_balanced() -> None:
    labels = fusion_task(6000, DIMS, num_classes=3).labels
    assert np.allclose(np.bincount(labels.numpy()) / 6000, 1 / 3, atol=0.03)


def test_two_class_task_needs_both_modalities() -> None:
    batch = fusion_task(3000, DIMS, num_classes=2, seed=0)
    f, y = {k: v.numpy() for k, v in batch.features.items()}, batch.labels.numpy()
    fused = np.concatenate([f["text"], f["audio"]], axis=1)
    for name in DIMS:  # each alone, the label-carrying ones included: chance
        assert _knn_accuracy(f[name], y) < 0.56, name
    assert _knn_accuracy(fused, y) > 0.6  # the same estimator does see the signal once both are there
    assert _mlp_accuracy(fused, y) >= 0.85


def test_three_class_task_needs_both_modalities() -> None:
    batch = fusion_task(3000, DIMS, num_classes=3, seed=1)
    f, y = {k: v.numpy() for k, v in batch.features.items()}, batch.labels.numpy()
    for name in DIMS:
        assert _knn_accuracy(f[name], y) < 0.38, name
    assert _mlp_accuracy(np.concatenate([f["text"], f["audio"]], axis=1), y) >= 0.65


def test_regression_task_needs_both_modalities() -> None:
    batch = fusion_task(3000, DIMS, task="regression", seed=2)
    f, y = {k: v.numpy() for k, v in batch.features.items()}, batch.labels.numpy()
    assert batch.labels.dtype == torch.float32
    assert y.min() > -3.0 and y.max() < 3.0 and y.std() > 1.0  # spread over the MOSI range
    constant_mae = float(np.abs(y[N_TRAIN:] - np.median(y[:N_TRAIN])).mean())
    for name in DIMS:
        assert _knn_mae(f[name], y) > 0.95 * constant_mae, name  # no better than a constant
    assert _mlp_mae(np.concatenate([f["text"], f["audio"]], axis=1), y) < 0.5 * constant_mae


def test_missing_rows_are_zero_and_marked() -> None:
    batch = fusion_task(2000, DIMS, missing=0.25, seed=3)
    for name in DIMS:
        present = batch.present[name]
        assert 0.70 < present.float().mean().item() < 0.80
        assert torch.all(batch.features[name][~present] == 0)
        assert torch.all(batch.features[name][present].abs().sum(dim=1) > 0)


def test_subset() -> None:
    batch = fusion_task(10, DIMS, missing=0.3)
    head = subset(batch, slice(0, 4))
    assert len(head) == 4 and head.ids == batch.ids[:4] and torch.equal(head.labels, batch.labels[:4])
    picked = subset(batch, torch.tensor([7, 2]))
    assert picked.ids == [batch.ids[7], batch.ids[2]]
    assert torch.equal(picked.present["audio"], batch.present["audio"][[7, 2]])
    mask = batch.labels == 1
    assert len(subset(batch, mask)) == int(mask.sum())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dims": {"text": 4}}, "at least two modalities"),
    ({"num_classes": 1}, "num_classes"),
    ({"missing": 1.0}, "missing"),
    ({"task": "ranking"}, "task must be"),
    ({"dims": {"text": 4, "audio": 0}}, "width"),
])
def test_invalid_arguments(kwargs, message) -> None:
    args = {"n": 10, "dims": DIMS, **kwargs}
    with pytest.raises(ConfigError, match=message):
        fusion_task(**args)
