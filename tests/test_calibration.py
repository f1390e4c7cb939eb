"""Temperature scaling: recovers a planted temperature, lowers ECE, ignores masks."""
import json

import numpy as np
import pytest
from scipy.special import expit

from shoeclass.calibration import SoftmaxTemperature, TemperatureScaling
from shoeclass.metrics import expected_calibration_error


def _binary(n=20000, temps=(0.5, 2.0, 3.0), seed=0):
    rng = np.random.default_rng(seed)
    z_true = rng.normal(0.0, 2.5, size=(n, len(temps)))
    y = (rng.random(z_true.shape) < expit(z_true)).astype(float)
    return z_true * np.asarray(temps), y  # logits over/under-confident by T


def test_recovers_known_temperature_and_lowers_ece():
    logits, y = _binary()
    ts = TemperatureScaling().fit(logits, y)
    np.testing.assert_allclose(ts.temperature_, [0.5, 2.0, 3.0], rtol=0.08)
    before = expected_calibration_error(expit(logits), y)
    after = expected_calibration_error(ts.transform(logits), y)
    assert after < before / 3
    assert after < 0.02


def test_masked_labels_are_ignored():
    logits, y = _binary(n=4000)
    rng = np.random.default_rng(1)
    masked = y.copy()
    drop = rng.random(y.shape[0]) < 0.3
    masked[drop, 1] = 0.5
    a = TemperatureScaling().fit(logits, masked).temperature_[1]
    b = TemperatureScaling().fit(logits[~drop], y[~drop]).temperature_[1]
    assert a == pytest.approx(b, rel=1e-4)


def test_single_class_column_keeps_unit_temperature_and_bounds_hold():
    logits, y = _binary(n=2000)
    y[:, 0] = 1.0
    ts = TemperatureScaling(log_t_bounds=(-1.0, 1.0)).fit(logits, y)
    assert ts.temperature_[0] == 1.0
    assert np.all((ts.temperature_ >= np.exp(-1) - 1e-9) & (ts.temperature_ <= np.exp(1) + 1e-9))


def test_round_trip_json():
    logits, y = _binary(n=3000)
    ts = TemperatureScaling().fit(logits, y)
    back = TemperatureScaling.from_dict(json.loads(json.dumps(ts.to_dict())))
    np.testing.assert_array_equal(back.transform(logits), ts.transform(logits))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="log_t_bounds"):
        TemperatureScaling(log_t_bounds=(1.0, -1.0)).fit(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        TemperatureScaling().fit(np.zeros((3, 2)), np.zeros((3, 3)))
    ts = TemperatureScaling().fit(*_binary(n=500))
    with pytest.raises(ValueError, match="columns"):
        ts.transform(np.zeros((2, 5)))


def test_softmax_temperature_recovers_and_round_trips():
    rng = np.random.default_rng(2)
    z_true = rng.normal(0.0, 2.0, size=(20000, 5))
    p = np.exp(z_true - z_true.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    t = (rng.random((len(p), 1)) > np.cumsum(p, 1)).sum(1)
    st = SoftmaxTemperature().fit(z_true * 2.5, t)
    assert st.temperature_ == pytest.approx(2.5, rel=0.08)
    probs = st.transform(z_true * 2.5)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    back = SoftmaxTemperature.from_dict(json.loads(json.dumps(st.to_dict())))
    assert back.temperature_ == st.temperature_
    with pytest.raises(ValueError, match="targets"):
        SoftmaxTemperature().fit(np.zeros((2, 3)), np.array([0, 3]))
