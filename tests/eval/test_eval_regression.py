"""MOSI-style regression metrics on a hand-worked example, and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eval.regression import regression_metrics

# Chosen to hit the conventions: clipping (3.4, -3.5), round-half-to-even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2),
# a reference of exactly 0 (left out of the non-zero Acc-2) and a prediction of -0.3 for it.
Y_TRUE = [-2.4, -0.6, 0.0, 0.4, 1.5, 2.6, 3.4, -3.5]
Y_PRED = [-1.6, 0.2, -0.3, 0.5, 2.5, 3.0, 2.2, -0.2]


def test_hand_example() -> None:
    m = regression_metrics(Y_TRUE, Y_PRED)
    assert m["n"] == 8
    # grades: truth [-2, -1, 0, 0, 2, 3, 3, -3], pred [-2, 0, 0, 0, 2, 3, 2, 0] -> 5 equal
    assert m["acc7"] == pytest.approx(5 / 8)
    # >= 0: truth [F F T T T T T F], pred [F T F T T T T F] -> 6 agree
    assert m["acc2"] == pytest.approx(6 / 8)
    # class T (support 5): P = R = 4/5; class F (support 3): P = R = 2/3
    assert m["f1"] == pytest.approx((5 * 0.8 + 3 * (2 / 3)) / 8)
    # without the zero reference: truth > 0 [F F T T T T F], pred > 0 [F T T T T T F] -> 6 of 7
    assert m["acc2_nonzero"] == pytest.approx(6 / 7)
    # class T (support 4): P 4/5, R 1 -> F1 8/9; class F (support 3): P 1, R 2/3 -> F1 0.8
    assert m["f1_nonzero"] == pytest.approx((4 * 8 / 9 + 3 * 0.8) / 7)
    assert m["mae"] == pytest.approx((0.8 + 0.8 + 0.3 + 0.1 + 1.0 + 0.4 + 1.2 + 3.3) / 8)
    t, p = np.array(Y_TRUE), np.array(Y_PRED)
    expected_corr = ((t - t.mean()) * (p - p.mean())).sum() / math.sqrt(((t - t.mean()) ** 2).sum()
                                                                        * ((p - p.mean()) ** 2).sum())
    assert m["corr"] == pytest.approx(expected_corr)


def test_perfect_predictions() -> None:
    m = regression_metrics([-3.0, -1.2, 0.4, 2.0], [-3.0, -1.2, 0.4, 2.0])
    assert m["acc7"] == m["acc2"] == m["acc2_nonzero"] == m["f1"] == m["f1_nonzero"] == 1.0
    assert m["mae"] == 0.0 and m["corr"] == pytest.approx(1.0)


def test_constant_predictions_have_undefined_corr() -> None:
    m = regression_metrics([-1.0, 0.5, 2.0], [0.0, 0.0, 0.0])
    assert math.isnan(m["corr"])
    assert m["mae"] == pytest.approx(3.5 / 3)


def test_all_zero_references_leave_nonzero_metrics_undefined() -> None:
    m = regression_metrics([0.0, 0.0], [0.3, -0.2])
    assert math.isnan(m["acc2_nonzero"]) and math.isnan(m["f1_nonzero"])
    assert m["acc2"] == 0.5


def test_accepts_arrays_and_nested_shapes() -> None:
    m = regression_metrics(np.array([[1.0], [-1.0]]), np.array([0.9, -1.1]))
    assert m["n"] == 2 and m["acc2"] == 1.0


@pytest.mark.parametrize(("y_true", "y_pred", "message"), [
    ([1.0, 2.0], [1.0], "2 references but 1 predictions"),
    ([], [], "no samples"),
    ([1.0, float("nan")], [1.0, 2.0], "non-finite"),
])
def test_invalid_input(y_true, y_pred, message) -> None:
    with pytest.raises(ValueError, match=message):
        regression_metrics(y_true, y_pred)
