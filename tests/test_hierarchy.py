"""Attribute clusters: planted clusters are found; the mixture read-out behaves."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist, squareform
from sklearn.metrics import adjusted_rand_score

from shoeclass.attributes import OUTPUT_KEYS
from shoeclass.hierarchy import AttributeClusters, average_linkage

IDX = {k: i for i, k in enumerate(OUTPUT_KEYS)}
# planted clusters: attributes fixed at 1, attributes that vary (everything else fixed at 0)
PLANTED = [
    (("vamp_straps", "vamp_openings", "height_low"), ("toe_strap", "straps_plugged")),  # sandals
    (("height_knee",), ("waterproof", "high_heel")),  # tall boots
    (("sports", "height_ankle"), ("indoor", "vamp_openings")),  # high-top sports shoes
    (("height_low",), ("high_heel", "indoor")),  # closed low shoes
]
SIZES = (600, 400, 300, 500)


def _planted(seed=0, n_nf=200):
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for c, ((ones, varying), n) in enumerate(zip(PLANTED, SIZES)):
        y = np.zeros((n, len(OUTPUT_KEYS)))
        for k in ones:
            y[:, IDX[k]] = 1
        for k in varying:
            y[:, IDX[k]] = rng.random(n) < 0.4
        mask = (rng.random(y.shape) < 0.15) & (rng.random((n, 1)) < 0.4)  # 40 % of rows lose some
        mask[:, IDX["not_footwear"]] = False
        rows.append(np.where(mask, 0.5, y))
        truth += [c] * n
    nf = np.full((n_nf, len(OUTPUT_KEYS)), 0.5)
    nf[:, IDX["not_footwear"]] = 1
    perm = rng.permutation(sum(SIZES) + n_nf)
    return np.vstack(rows + [nf])[perm], np.array(truth + [4] * n_nf)[perm]


@pytest.fixture(scope="module")
def fitted():
    y, truth = _planted()
    return AttributeClusters(max_varying=3).fit(y), y, truth


def test_finds_planted_clusters(fitted):
    ac, y, truth = fitted
    assert len(ac.clusters_) == 5
    assert adjusted_rand_score(truth, ac.assign(y)) > 0.95
    assert ac.clusters_[ac.not_footwear_cluster_].name == "not footwear"
    assert np.bincount(ac.assign(y)).tolist() == [c.size for c in ac.clusters_]
    for c in ac.clusters_:
        assert len(c.varying) <= 3
    found = {frozenset(c.varying) for c in ac.clusters_}
    for _, varying in PLANTED:
        assert frozenset(varying) in found
    fixed = AttributeClusters(n_clusters=4).fit(y)
    assert adjusted_rand_score(truth, fixed.assign(y)) > 0.95


@pytest.mark.parametrize("max_varying", [2, 3, 5])
def test_every_cluster_varies_in_at_most_max_varying(max_varying):
    y, _ = _planted(seed=3)
    ac = AttributeClusters(max_varying=max_varying).fit(y)
    assert ac.varying_.sum(1).max() <= max_varying
    assert "cluster" in ac.describe() and all(c.name in ac.describe() for c in ac.clusters_)


def test_weighted_linkage_matches_scipy_on_expanded_rows():
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(12, 3))
    w = rng.integers(1, 4, size=12)
    ours = average_linkage(squareform(pdist(pts)), w)
    ref = linkage(np.repeat(pts, w, axis=0), method="average")
    np.testing.assert_allclose(ours[:, 2], ref[-len(ours):, 2], rtol=1e-9)
    for n in (2, 3, 5):
        a = fcluster(ours, n, "maxclust")
        b = fcluster(ref, n, "maxclust")[np.cumsum(w) - 1]
        assert adjusted_rand_score(a, b) == 1.0


@st.composite
def gate_and_heads(draw, c=5, k=len(OUTPUT_KEYS)):
    n = draw(st.integers(1, 4))
    g = draw(arrays(np.float64, (n, c), elements=st.floats(0, 1))) + 1e-3
    a = draw(arrays(np.float64, (n, k), elements=st.floats(0, 1)))
    return g, a


@settings(max_examples=60, deadline=None)
@given(gate_and_heads(), st.permutations(range(5)))
def test_combine_is_a_probability_and_invariant_to_relabelling(fitted, ga, perm):
    ac = fitted[0]
    g, a = ga
    out = ac.combine(g, a)
    assert out.shape == a.shape and np.all((out >= 0) & (out <= 1))
    d = ac.to_dict()
    d["clusters"] = [d["clusters"][i] for i in perm]
    d["not_footwear_cluster"] = perm.index(ac.not_footwear_cluster_)
    d["patterns"]["labels"] = [perm.index(c) for c in d["patterns"]["labels"]]
    relabelled = AttributeClusters.from_dict(d)
    np.testing.assert_allclose(relabelled.combine(g[:, perm], a), out, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ac.combine(g[0], a[0]), out[0])
    y = fitted[1]
    np.testing.assert_array_equal(np.array(perm)[relabelled.assign(y)], ac.assign(y))


def test_combine_pull_and_not_footwear(fitted):
    ac, _, _ = fitted
    a = np.full(len(OUTPUT_KEYS), 0.3)
    nf = np.eye(5)[ac.not_footwear_cluster_]
    assert ac.combine(nf, a)[IDX["not_footwear"]] >= 0.9
    boots = next(i for i, c in enumerate(ac.clusters_) if c.typical.get("height_knee") == 1)
    out = ac.combine(np.eye(5)[boots], a)
    assert out[IDX["height_knee"]] > 0.9 and out[IDX["height_low"]] < 0.1
    assert out[IDX["waterproof"]] == pytest.approx(0.3)  # varying: the head decides
    keep = AttributeClusters.from_dict({**ac.to_dict(), "params": {**ac.to_dict()["params"], "pull": 0.0}})
    np.testing.assert_allclose(keep.combine(np.eye(5)[boots], a), a)


def test_atypical_firing(fitted):
    ac, _, _ = fitted
    boots = next(i for i, c in enumerate(ac.clusters_) if c.typical.get("height_knee") == 1)
    a = np.zeros(len(OUTPUT_KEYS))
    a[[IDX["height_knee"], IDX["waterproof"], IDX["vamp_straps"]]] = 0.9
    assert ac.atypical_firing(np.eye(5)[boots], a) == ["vamp_straps"]
    assert ac.atypical_firing(np.eye(5)[boots], a, threshold=0.95) == []


def test_round_trip_json(fitted):
    ac, y, _ = fitted
    back = AttributeClusters.from_dict(json.loads(json.dumps(ac.to_dict())))
    np.testing.assert_array_equal(back.assign(y), ac.assign(y))
    assert back.describe() == ac.describe()
    assert [c.name for c in back.clusters_] == [c.name for c in ac.clusters_]


def test_bad_parameters_raise():
    y, _ = _planted(n_nf=0)
    with pytest.raises(ValueError, match="pull"):
        AttributeClusters(pull=2.0).fit(y)
    with pytest.raises(ValueError, match="min_observed"):
        AttributeClusters(min_observed=0).fit(y)
    with pytest.raises(ValueError, match="y must be"):
        AttributeClusters().fit(np.full((3, len(OUTPUT_KEYS)), 0.3))
    assert AttributeClusters().fit(y).not_footwear_cluster_ is None
