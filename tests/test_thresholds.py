"""Decision thresholds: tuned on validation where it has enough labels, the prior's Bayes
threshold where it has not."""
import numpy as np
import pytest

from shoeclass.attributes import MASK
from shoeclass.decision import prior_thresholds, tune_thresholds


def _labels(pos_rate: float, n: int = 1000) -> np.ndarray:
    return (np.arange(n) < pos_rate * n).astype(np.float32)[:, None]


def test_prior_threshold_is_even_odds_under_the_training_frequencies():
    y = np.concatenate([_labels(0.5), _labels(0.01), _labels(0.2)], 1)
    y[500:, 2] = MASK  # masked labels do not count: 200 positives of 500 known -> 0.4
    thr = prior_thresholds(y, balance=1.0)  # balanced heads: effective prior 0.5
    assert thr == pytest.approx([0.5, 0.99, 0.6], abs=1e-6)
    assert prior_thresholds(y, balance=0.0) == pytest.approx([0.5, 0.5, 0.5], abs=1e-6)  # unweighted heads


def test_rare_outputs_take_the_fallback_and_the_others_are_tuned():
    rng = np.random.default_rng(0)
    y = np.stack([rng.integers(0, 2, 400), (np.arange(400) < 3)], 1).astype(np.float32)  # 3 positives only
    probs = np.stack([np.where(y[:, 0] == 1, 0.9, 0.7), rng.random(400)], 1)  # separable at 0.8
    thr = tune_thresholds(probs, y, fallback=np.array([0.5, 0.97]))
    assert 0.7 < thr[0] <= 0.9 and thr[1] == 0.97
    assert tune_thresholds(probs, y)[1] == 0.5


def test_accuracy_alone_trades_the_rare_class_for_the_common_one():
    # 5 % positives whose scores overlap the negatives: accuracy alone says "absent" more often
    rng = np.random.default_rng(1)
    y = (np.arange(2000) < 100).astype(np.float32)[:, None]
    probs = np.clip(np.where(y == 1, 0.7, 0.35) + rng.normal(0, 0.12, y.shape), 0, 1)
    both = tune_thresholds(probs, y)[0]
    acc_only = tune_thresholds(probs, y, accuracy_weight=1.0, balanced_weight=0.0)[0]
    assert acc_only > both
    pred = lambda t: (probs[:, 0] >= t) == (y[:, 0] == 1)  # noqa: E731
    assert pred(acc_only).mean() >= pred(both).mean()


def test_class_weights_cap_bounds_every_weight_and_leaves_the_others():
    from shoeclass.labels import class_weights

    y = np.concatenate([_labels(0.001), _labels(0.3)], 1)
    full, capped = class_weights(y, 1.0), class_weights(y, 1.0, max_weight=10.0)
    assert full[1, 0] == pytest.approx(500.0) and capped[1, 0] == pytest.approx(10.0)
    np.testing.assert_allclose(capped[:, 1], full[:, 1])  # weights under the cap are untouched
    assert capped.max() <= 10.0
