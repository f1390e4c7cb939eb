"""Foreign and unsuitable photos set aside, photos of different products flagged, and the refit of
the fusion on real multi-photo items (issue 15). Tiny synthetic arrays, no ../shared."""
import json

import numpy as np
import pytest

from shoeclass.attributes import MASK, OUTPUT_KEYS
from shoeclass.decision import DecisionLayer
from shoeclass.fit_fusion import changed_decisions, item_arrays, item_labels, refit_decision
from shoeclass.fusion import BayesianFusion
from shoeclass.item_checks import ItemChecks, pair_cosines
from shoeclass.result import ItemResult, PhotoResult, decide

K = len(OUTPUT_KEYS)
NF = OUTPUT_KEYS.index("not_footwear")
HEEL = OUTPUT_KEYS.index("high_heel")


def layer(rho=0.5, **checks) -> DecisionLayer:
    fus = BayesianFusion.from_dict({"eps": 1e-6, "priors": [0.3] * K, "rho": [rho] * K})
    return DecisionLayer(fusion=fus, checks=ItemChecks(**{"nf_threshold": 0.5, **checks}))


def shoe(p_heel: float) -> np.ndarray:
    row = np.full(K, 0.1)
    row[HEEL], row[NF] = p_heel, 0.01
    return row


def test_not_footwear_photo_is_set_aside_and_moves_nothing():
    dl = layer()
    shoes = np.stack([shoe(0.8), shoe(0.7)])
    box = np.full(K, 0.05)
    box[NF], box[HEEL] = 0.99, 0.01  # a confident "no heel" from the photo of a box
    w, aside = dl.screen(np.vstack([shoes, box]), None, ["a.jpg", "b.jpg", "box.jpg"])
    assert aside == [{"photo": "box.jpg", "attributes": "all", "reason": aside[0]["reason"]}]
    assert "not footwear" in aside[0]["reason"]
    np.testing.assert_allclose(dl.fuse(np.vstack([shoes, box]), weights=w), dl.fuse(shoes, weights=np.ones((2, K))))


def test_all_photos_not_footwear_sets_none_aside():
    dl = layer()
    boxes = np.full((2, K), 0.05)
    boxes[:, NF] = 0.99
    w, aside = dl.screen(boxes, None)
    assert aside == [] and (w > 0).all()
    assert dl.fuse(boxes, weights=w)[NF] > 0.5


def test_photo_showing_nothing_of_an_attribute_is_set_aside_for_it_only():
    dl = layer(suit_floor=0.5)
    probs = np.stack([shoe(0.9), shoe(0.05)])
    suit = np.ones((2, K))
    suit[1, HEEL] = 0.1  # the sole-only crop: it cannot see the heel
    w, aside = dl.screen(probs, suit, ["side.jpg", "sole.jpg"])
    assert aside[0]["photo"] == "sole.jpg" and aside[0]["attributes"] == ["high_heel"]
    fused = dl.fuse(probs, weights=w)
    assert fused[HEEL] == pytest.approx(0.9)
    assert w[1, 0] == 1.0  # still counts for the other attributes


def test_unsuitable_everywhere_is_kept_rather_than_leaving_no_photo():
    dl = layer(suit_floor=0.5)
    suit = np.full((2, K), 0.1)
    w, aside = dl.screen(np.stack([shoe(0.9), shoe(0.8)]), suit)
    assert aside == [] and w[0, HEEL] == pytest.approx(0.1)


def test_different_products_name_the_odd_photo_and_one_product_passes():
    checks = ItemChecks(min_cosine=0.5)
    rng = np.random.default_rng(0)
    a = rng.normal(size=16)
    same = np.stack([a + 0.1 * rng.normal(size=16) for _ in range(3)])
    other = rng.normal(size=16)
    emb = np.vstack([same, other])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert checks.odd_photo(emb[:3]) is None
    idx, cos = checks.odd_photo(emb)
    assert idx == 3 and cos < 0.5
    w = np.ones((4, K))
    w[3] = 0.0  # a photo set aside as not footwear is not compared
    assert checks.odd_photo(emb, w) is None
    assert ItemChecks().odd_photo(emb) is None  # no threshold fitted: the check is off


def test_fit_standardises_and_takes_the_quantile_of_same_item_pairs():
    # raw ImageNet-like features: non-negative with a large shared offset, so raw cosines are all
    # near 1; the fitted standardisation must remove it so that products can be told apart
    rng = np.random.default_rng(0)
    products = rng.normal(size=(40, 32))
    items = np.repeat(np.arange(40), 2)
    raw = 10.0 + products[items] + 0.2 * rng.normal(size=(80, 32))
    plain = ItemChecks().embed(raw)
    assert (plain @ plain.T).min() > 0.95  # without the standardisation everything looks alike
    checks = ItemChecks().fit(raw, items, review_rate=0.05)
    emb = checks.embed(raw)
    pairs = pair_cosines(emb, items)
    assert checks.min_cosine == pytest.approx(np.quantile(pairs, 0.05))
    assert np.mean(pairs < checks.min_cosine) <= 0.05
    other = emb[::2] @ emb[1::2].T  # (40, 40): photo of item i against the second photo of item j
    different = other[~np.eye(40, dtype=bool)]
    assert np.mean(different < checks.min_cosine) > 0.95
    again = ItemChecks.from_dict(checks.to_dict())  # the card keeps what was fitted
    np.testing.assert_allclose(again.embed(raw), emb, atol=1e-5)
    with pytest.raises(ValueError, match="width"):
        checks.embed(raw[:, :8])
    with pytest.raises(ValueError, match="two or more photos"):
        ItemChecks().fit(raw[:5], np.arange(5))
    with pytest.raises(ValueError, match="review_rate"):
        ItemChecks().fit(raw, items, review_rate=1.5)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="suit_floor"):
        ItemChecks(suit_floor=2.0)
    with pytest.raises(ValueError, match="min_cosine"):
        ItemChecks(min_cosine=3.0)


def test_item_label_is_what_the_photos_agree_on():
    y = np.array([[1, 0.5, 0, 1], [1, 1, 0.5, 0]], dtype=float)
    np.testing.assert_array_equal(item_labels(y), [1, 1, 0, MASK])
    ids, groups = item_arrays(np.array(["a", "b", "a", "c", "c", "c"]), np.arange(6))
    assert ids == ["a", "c"] and [g.tolist() for g in groups] == [[0, 2], [3, 4, 5]]


def test_refit_uses_real_items_where_labelled_and_keeps_the_rest():
    rng = np.random.default_rng(1)
    n = 400
    items = np.repeat(np.arange(n), 2)
    # both photos of an item say the same calibrated probability: the second adds nothing, so the
    # correlation fitted on these items must come out high (naive Bayes would count it twice)
    p_item = rng.uniform(0.05, 0.95, n)
    y = np.full((2 * n, K), MASK)
    y[:, HEEL] = np.repeat(rng.random(n) < p_item, 2)
    y[:, NF] = 0
    probs = np.full((2 * n, K), 0.2)
    probs[:, HEEL] = np.repeat(p_item, 2)
    probs[:, NF] = 0.01
    emb = np.repeat(rng.normal(size=(n, 8)), 2, axis=0) + 0.05 * rng.normal(size=(2 * n, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    dl = layer(rho=0.25)
    dl.thresholds[NF] = 0.9
    crop = probs.copy()
    crop[:, HEEL] = 0.01  # a sole-only crop confidently (and wrongly) saying "no heel"
    crop_suit = np.ones_like(crop)
    crop_suit[:, HEEL] = 0.15
    report = refit_decision(dl, probs, np.ones_like(probs), emb, y, items, min_labelled=10,
                            crop_probs=crop, crop_suit=crop_suit, max_change=0.0)
    assert report["items"] == n and report["rho_from_real_items"][HEEL]
    assert report["rho"][0] == 0.25 and dl.fusion.rho_[0] == 0.25  # unlabelled output: fallback kept
    assert dl.fusion.rho_[HEEL] > 0.5
    assert dl.checks.min_cosine is not None and dl.checks.min_cosine > 0.9
    # a photo is set aside as not footwear where the model decides "not footwear", no lower: a
    # crop at p = 0.6 is still read as a shoe
    assert dl.checks.nf_threshold == 0.9
    doubtful = shoe(0.8)
    doubtful[NF] = 0.6
    assert dl.screen(np.stack([shoe(0.8), doubtful]), None)[1] == []
    assert dl.checks.suit_floor > 0.15  # the crop is set aside for the heel ...
    _, p, s = item_arrays(items, probs, np.ones_like(probs))
    assert changed_decisions(dl, p, s, crop[::2], crop_suit[::2]) == 0.0  # ... and moves no decision
    again = DecisionLayer.from_dict(json.loads(json.dumps(dl.to_dict())))
    assert again.checks.to_dict() == dl.checks.to_dict()
    np.testing.assert_allclose(again.fusion.rho_, dl.fusion.rho_)


def test_result_json_says_what_was_set_aside_and_why_review():
    photos = [PhotoResult("a.jpg", np.full(K, 0.2)), PhotoResult("box.jpg", np.full(K, 0.9))]
    aside = [{"photo": "box.jpg", "attributes": "all", "reason": "not footwear"}]
    r = ItemResult(photos, np.full(K, 0.2), set_aside=aside)
    d = r.to_dict()
    assert d["status"] == "ok" and d["set_aside"] == aside and d["review"] is None
    review = {"reason": "different_products", "photo": "b.jpg", "detail": "b.jpg looks like another product"}
    d = ItemResult(photos, np.full(K, 0.2), tariff={"status": "ok"}, review=review).to_dict()
    assert d["status"] == "needs_review" and d["review"]["photo"] == "b.jpg"
    assert decide(np.full(K, 0.2))  # the decisions are still given


def test_a_photo_unlike_the_others_of_three_is_set_aside_and_named():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=16), rng.normal(size=16)
    emb = np.stack([a + 0.1 * rng.normal(size=16), a + 0.1 * rng.normal(size=16), b])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    probs = np.full((3, K), 0.1)
    probs[2, HEEL] = 0.99  # the other product is a heel: it must not make the item heeled
    checks = ItemChecks(min_cosine=0.5)
    w, aside = checks.screen(probs, None, ["a1", "a2", "b"], emb)
    assert (w[2, :NF] == 0).all() and (w[:2] == 1).all()
    assert [(x["photo"], x["attributes"]) for x in aside] == [("b", "all")] and "another product" in aside[0]["reason"]
    assert checks.odd_photo(emb, w)[0] == 2  # and the item still goes to review, naming it
    # two photos: nothing tells which is the odd one, so none is set aside (the review names one)
    w2, aside2 = checks.screen(probs[1:], None, ["a2", "b"], emb[1:])
    assert aside2 == [] and (w2 == 1).all()
    # three photos all unlike each other: no single odd photo to set aside
    c = rng.normal(size=16)
    three = np.stack([a, b, c]) / np.linalg.norm(np.stack([a, b, c]), axis=1, keepdims=True)
    assert checks.screen(probs, None, None, three)[1] == []
