"""One decision path: ``evaluate`` scores each photo by the yes/no ``classify`` gives it."""
import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from shoeclass.api import Classifier
from shoeclass.attributes import HEIGHT_KEYS, OUTPUT_KEYS
from shoeclass.decision import DecisionLayer
from shoeclass.evaluate import predict_table
from shoeclass.fusion import BayesianFusion
from shoeclass.labels import read_labels
from shoeclass.result import decide, decisions

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.jpg"))
HEIGHTS = [OUTPUT_KEYS.index(k) for k in HEIGHT_KEYS]


def test_evaluate_and_classify_give_each_photo_the_same_yes_no(tmp_path):
    clf = Classifier()
    (tmp_path / "images").mkdir()
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "item", "source", "src_class", "split", "origin", *OUTPUT_KEYS])
        for i, photo in enumerate(EXAMPLES):
            shutil.copy(photo, tmp_path / "images" / photo.name)
            w.writerow([f"images/{photo.name}", f"i{i}", "example", "x", "test", "eye", *[0.5] * len(OUTPUT_KEYS)])
    probs = predict_table(clf, read_labels(tmp_path), progress=False)  # what evaluate scores
    for photo, p in zip(EXAMPLES, probs):
        d = clf.classify(photo).to_dict()
        assert d["decisions"] == decide(p, clf.thresholds), photo.name
        np.testing.assert_allclose([d["attributes"][k] for k in OUTPUT_KEYS], p, atol=1e-5)


def test_one_photo_is_its_own_item():
    fusion = BayesianFusion.from_dict({"priors": [0.2] * len(OUTPUT_KEYS), "rho": 0.5, "eps": 1e-4})
    p = np.random.default_rng(0).uniform(0.01, 0.99, (1, len(OUTPUT_KEYS)))
    fused, _ = DecisionLayer(fusion=fusion).item(p, suitability=np.full((1, len(OUTPUT_KEYS)), 0.3))
    np.testing.assert_array_equal(fused, p[0])


@pytest.mark.parametrize("seed", range(5))
def test_exactly_one_height_and_it_agrees_with_the_thresholds(seed):
    rng = np.random.default_rng(seed)
    p, thr = rng.uniform(0, 1, (200, len(OUTPUT_KEYS))), rng.uniform(0.05, 0.95, len(OUTPUT_KEYS))
    yes = decisions(p, thr)
    footwear = ~yes[:, OUTPUT_KEYS.index("not_footwear")]
    assert (yes[footwear][:, HEIGHTS].sum(1) == 1).all() and not yes[~footwear][:, HEIGHTS].any()
    others = [k for k in range(len(OUTPUT_KEYS)) if k not in HEIGHTS]
    np.testing.assert_array_equal(yes[:, others], p[:, others] >= thr[others])
    lone = footwear & ((p[:, HEIGHTS] >= thr[HEIGHTS]).sum(1) == 1)  # one height passes: it is the one
    np.testing.assert_array_equal(yes[lone][:, HEIGHTS], (p[lone][:, HEIGHTS] >= thr[HEIGHTS]))
