"""Classification metrics agree with scikit-learn; the local evaluate modules and compute_metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support

from emollm.dataset.label_sets import load_label_set
from eval.classification import INVALID, classification_metrics, kfold_summary
from eval.trainer_metrics import make_compute_metrics

METRICS_DIR = Path(__file__).resolve().parents[2] / "eval" / "metrics"


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_sklearn_on_random_cases(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = list(load_label_set("dfew").labels)
    n = int(rng.integers(5, 200))
    y_true = list(rng.choice(labels, n))
    y_pred = list(rng.choice(labels, n))
    m = classification_metrics(y_true, y_pred, labels)
    assert m["war"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["waf"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, lab in enumerate(labels):
        assert m["per_class"][lab]["recall"] == pytest.approx(r[i])
        assert m["per_class"][lab]["precision"] == pytest.approx(p[i])
        assert m["per_class"][lab]["f1"] == pytest.approx(f[i])
        assert m["per_class"][lab]["support"] == s[i]
    counts = np.asarray(m["confusion"]["counts"])
    assert counts.sum() == n and np.trace(counts) == sum(a == b for a, b in zip(y_true, y_pred, strict=True))
    rows = np.asarray(m["confusion"]["row_normalized"])
    assert np.allclose(rows[counts.sum(1) > 0].sum(1), 1.0, atol=1e-5)


def test_exact_values_on_a_known_confusion() -> None:
    # references a a a b b c, predictions a a b b c c: confusion [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    m = classification_metrics(list("aaabbc"), list("aabbcc"), ["a", "b", "c"])
    assert m["confusion"]["counts"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["war"] == pytest.approx(4 / 6)
    assert m["uar"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)  # recalls 2/3, 1/2, 1
    # precisions 1, 1/2, 1/2 -> F1 0.8, 0.5, 2/3; weighted by support 3, 2, 1
    assert m["waf"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["per_class"]["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}


def test_invalid_predictions_count_wrong() -> None:
    m = classification_metrics(["a", "b", "a", "c"], ["a", None, "b", "c"], ["a", "b", "c"])
    assert m["war"] == pytest.approx(0.5)
    assert m["uar"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m["confusion"]["columns"][-1] == INVALID
    assert m["confusion"]["counts"][1] == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="outside the label set"):
        classification_metrics(["x"], ["a"], ["a"])


def test_kfold_mean_std() -> None:
    folds = {"f1": classification_metrics(["a", "b"], ["a", "b"], ["a", "b"]),
             "f2": classification_metrics(["a", "b"], ["a", "a"], ["a", "b"])}
    s = kfold_summary(folds)
    assert s["war"]["mean"] == pytest.approx(0.75) and s["war"]["std"] == pytest.approx(0.25)
    assert s["folds"] == ["f1", "f2"]


def test_local_evaluate_modules_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    rng = np.random.default_rng(0)
    labels = ["happy", "sad", "neutral", "angry"]
    y_true, y_pred = list(rng.choice(labels, 50)), list(rng.choice(labels, 50))
    assert evaluate.load(str(METRICS_DIR / "uar")).compute(predictions=y_pred, references=y_true)["uar"] == \
        pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert evaluate.load(str(METRICS_DIR / "war")).compute(predictions=y_pred, references=y_true)["war"] == \
        pytest.approx(accuracy_score(y_true, y_pred))
    assert evaluate.load(str(METRICS_DIR / "waf")).compute(predictions=y_pred, references=y_true)["waf"] == \
        pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    allm = evaluate.load(str(METRICS_DIR / "emotion_classification")).compute(
        predictions=["happy", "junk"], references=["happy", "sad"], labels=labels)
    assert allm["war"] == 0.5 and allm["per_class"]["sad"]["recall"] == 0.0


class _EP:
    def __init__(self, predictions, label_ids):
        self.predictions, self.label_ids = predictions, label_ids


def test_compute_metrics_text_and_ids() -> None:
    cm = make_compute_metrics("dfew")
    out = cm(_EP(["It is happy.", "sad", "no idea"], ["happy", "sad", "angry"]))
    assert out["war"] == pytest.approx(2 / 3) and out["invalid_rate"] == pytest.approx(1 / 3)
    labels = load_label_set("dfew").labels
    logits = np.eye(len(labels), dtype=np.float32)[[0, 1, 1]]
    out = cm(_EP(logits, np.array([0, 1, 2])))
    assert out["war"] == pytest.approx(2 / 3)
    out = cm(_EP(np.array([0, 1, 2]), np.array([0, 1, 2])))
    assert out["uar"] == 1.0 and out["invalid_rate"] == 0.0
