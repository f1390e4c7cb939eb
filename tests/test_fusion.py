"""Bayesian fusion of several photos: property tests and a fitted-correlation check."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shoeclass.fusion import BayesianFusion, effective_count, label_priors

EPS = 1e-6
prob = st.floats(0.001, 0.999)


@st.composite
def setups(draw, max_m=5):
    k = draw(st.integers(1, 4))
    m = draw(st.integers(1, max_m))
    probs = draw(arrays(np.float64, (m, k), elements=prob))
    weights = draw(st.one_of(st.none(), arrays(np.float64, (m, k), elements=st.floats(0, 1))))
    priors = draw(arrays(np.float64, (k,), elements=st.floats(0.02, 0.98)))
    rho = draw(arrays(np.float64, (k,), elements=st.floats(0, 1)))
    fus = BayesianFusion.from_dict({"eps": EPS, "priors": priors.tolist(), "rho": rho.tolist()})
    return fus, probs, weights


@settings(max_examples=150, deadline=None)
@given(setups(), st.randoms(use_true_random=False))
def test_order_invariance(setup, rnd):
    fus, probs, weights = setup
    perm = list(range(len(probs)))
    rnd.shuffle(perm)
    w2 = None if weights is None else weights[perm]
    np.testing.assert_allclose(fus.fuse(probs[perm], w2), fus.fuse(probs, weights), rtol=1e-10, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(setups(max_m=1))
def test_one_photo_is_itself(setup):
    fus, probs, _ = setup
    np.testing.assert_array_equal(fus.fuse(probs), probs[0])
    np.testing.assert_array_equal(fus.fuse(probs, np.ones_like(probs)), probs[0])


@settings(max_examples=200, deadline=None)
@given(setups(), st.data())
def test_agreeing_photo_never_moves_posterior_the_wrong_way(setup, data):
    fus, probs, weights = setup
    k = probs.shape[1]
    before = fus.fuse(probs, weights)
    up = data.draw(st.booleans())
    # a photo whose evidence points up (p >= prior) or down (p <= prior), for every output
    frac = data.draw(arrays(np.float64, (k,), elements=st.floats(0, 1)))
    pri = fus.priors_
    new = np.where(up, pri + frac * (1 - EPS - pri), pri - frac * (pri - EPS))
    w_new = data.draw(arrays(np.float64, (1, k), elements=st.floats(0, 1)))
    w = None if weights is None else np.vstack([weights, w_new])
    after = fus.fuse(np.vstack([probs, new]), w)
    if up:
        assert np.all(after >= before - 1e-12)
    else:
        assert np.all(after <= before + 1e-12)


@settings(max_examples=100, deadline=None)
@given(setups())
def test_unsuitable_attribute_returns_prior(setup):
    fus, probs, weights = setup
    w = np.ones_like(probs) if weights is None else weights.copy()
    w[:, 0] = 0.0
    out = fus.fuse(probs, w)
    assert out[0] == pytest.approx(fus.priors_[0], rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(setups(), st.data())
def test_probabilities_stay_in_unit_interval(setup, data):
    fus, probs, weights = setup
    extreme = data.draw(arrays(np.float64, probs.shape, elements=st.sampled_from([0.0, 1.0, 1e-300])))
    for p in (probs, extreme, np.vstack([probs, extreme])):
        w = weights if weights is not None and len(weights) == len(p) else None
        out = fus.fuse(p, w)
        assert np.all((out >= 0) & (out <= 1)) and np.all(np.isfinite(out))


def test_identical_photos_count_as_effective_number():
    fus = BayesianFusion.from_dict({"eps": EPS, "priors": [0.2, 0.2, 0.2], "rho": [0.0, 0.5, 1.0]})
    p = np.full((4, 3), 0.6)
    d = np.log(0.6 / 0.4) - np.log(0.2 / 0.8)
    expect = 1 / (1 + np.exp(-(np.log(0.25) + effective_count(4.0, np.array([0.0, 0.5, 1.0])) * d)))
    np.testing.assert_allclose(fus.fuse(p), expect, rtol=1e-12)
    np.testing.assert_allclose(effective_count(4.0, np.array([0.0, 0.5, 1.0])), [4.0, 1.6, 1.0])


def test_nan_padding_equals_fewer_photos_and_batch_matches_single():
    fus = BayesianFusion.from_dict({"eps": EPS, "priors": [0.3, 0.6], "rho": [0.3, 0.7]})
    a = np.array([[0.9, 0.2], [0.7, 0.4]])
    padded = np.vstack([a, np.full((1, 2), np.nan)])
    batch = np.stack([padded, np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]])])
    out = fus.fuse_items(batch)
    np.testing.assert_allclose(out[0], fus.fuse(a), rtol=1e-12)
    np.testing.assert_allclose(out[1], fus.fuse(batch[1]), rtol=1e-12)
    per_photo = fus.fuse(np.vstack([a, [[0.99, 0.01]]]), np.array([1.0, 1.0, 0.0]))  # (M,) weights
    np.testing.assert_allclose(per_photo, fus.fuse(a), rtol=1e-12)
    half = fus.fuse(a[:1], np.array([0.5]))  # a half-suitable lone photo: half its evidence
    expect = 1 / (1 + np.exp(-(np.log([0.3 / 0.7, 0.6 / 0.4]) + 0.5 * (
        np.log(a[0] / (1 - a[0])) - np.log([0.3 / 0.7, 0.6 / 0.4])))))
    np.testing.assert_allclose(half, expect, rtol=1e-12)


def _items(r, n=3000, m=3, k=2, seed=0):
    """Calibrated photos of items whose per-photo noise has latent correlation r."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.3).astype(float)
    s = np.sqrt(r) * rng.normal(size=(n, 1, k)) + np.sqrt(1 - r) * rng.normal(size=(n, m, k))
    z = 2 * y[:, None, :] - 1 + s
    return 1 / (1 + np.exp(-(2 * z + np.log(0.3 / 0.7)))), y


def test_fit_rho_tracks_correlation_and_beats_naive_bayes():
    p0, y0 = _items(0.0)
    assert np.all(BayesianFusion(priors=[0.3, 0.3]).fit(p0, y0).rho_ < 0.2)
    p1, y1 = _items(0.0, seed=1)
    p1 = np.repeat(p1[:, :1], 3, axis=1)  # three copies of one photo: no new evidence
    fitted = BayesianFusion(priors=[0.3, 0.3]).fit(p1, y1)
    assert np.all(fitted.rho_ > 0.8)
    naive = BayesianFusion(priors=[0.3, 0.3], rho=0.0).fit(p1, y1)

    def logloss(f):
        q = np.clip(f.fuse_items(p1), 1e-12, 1 - 1e-12)
        return -np.mean(y1 * np.log(q) + (1 - y1) * np.log(1 - q))
    assert logloss(fitted) < logloss(naive)


def test_masks_priors_and_round_trip():
    p, y = _items(0.5, n=500)
    y[:100, 0] = 0.5
    fus = BayesianFusion().fit(p, y)
    np.testing.assert_allclose(fus.priors_, label_priors(y))
    assert label_priors(np.full((3, 1), 0.5))[0] == 0.5
    back = BayesianFusion.from_dict(json.loads(json.dumps(fus.to_dict())))
    np.testing.assert_array_equal(back.fuse_items(p), fus.fuse_items(p))


def test_bad_input_raises():
    fus = BayesianFusion.from_dict({"eps": EPS, "priors": [0.5], "rho": [0.5]})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fus.fuse(np.array([[1.5]]))
    with pytest.raises(ValueError, match="weights"):
        fus.fuse(np.array([[0.5]]), np.array([[2.0]]))
    with pytest.raises(ValueError, match="rho"):
        BayesianFusion(rho=1.5).fit(np.full((2, 1, 1), 0.5), np.ones((2, 1)) * 0.0 + [[0], [1]])
