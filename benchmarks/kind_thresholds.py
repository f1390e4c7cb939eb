"""Decision thresholds per kind of photo (issue 14, a lever tried without a GPU).

Would thresholds tuned on the validation photos of one kind (catalogue; in the wild = `worn` +
`street`) read the test photos of that kind better than the shipped thresholds, tuned on all of
validation? The kind is taken from the labels (an upper bound: a deployed model would have to
predict it); the last row tunes on the test photos in the wild themselves (an oracle, not a model).
The target line is the issue's street goal under the best non-oracle row.

    python benchmarks/kind_thresholds.py --data ../shared/data [--model DIR]
"""
from __future__ import annotations

import argparse

import numpy as np

from shoeclass.api import Classifier
from shoeclass.decision import tune_thresholds
from shoeclass.evaluate import predict_table
from shoeclass.labels import photo_kinds, read_labels
from shoeclass.metrics import attribute_metrics, summarize
from shoeclass.result import decisions

STREET_GOAL = 0.85


def kind_scores(probs: np.ndarray, y: np.ndarray, kinds: dict[str, np.ndarray], wild: np.ndarray,
                thr_catalogue: np.ndarray, thr_wild: np.ndarray) -> dict[str, tuple[float, float]]:
    """(mean accuracy, mean balanced accuracy) per kind, each photo decided with its kind's thresholds."""
    pred = np.zeros(probs.shape, dtype=bool)
    pred[~wild] = decisions(probs[~wild], thr_catalogue)
    pred[wild] = decisions(probs[wild], thr_wild)
    out = {}
    for kind, sel in kinds.items():
        s = summarize(attribute_metrics(probs[sel], y[sel], pred=pred[sel]))
        out[kind] = (s["mean_accuracy"], s["mean_balanced_accuracy"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    args = ap.parse_args()

    clf = Classifier(args.model)
    labels = read_labels(args.data)
    val, test = labels.subset(labels.split == "val"), labels.subset(labels.split == "test")
    pv, pt = predict_table(clf, val, progress=False), predict_table(clf, test, progress=False)
    kv, kt = photo_kinds(val), photo_kinds(test)
    wild_v, wild_t = kv["worn"] | kv["street"], kt["worn"] | kt["street"]
    shipped = clf.thresholds
    rows = {
        "shipped (tuned on all validation photos)": (shipped, shipped),
        "catalogue ones on catalogue val, wild ones on worn + street val":
            (tune_thresholds(pv[~wild_v], val.y[~wild_v], shipped), tune_thresholds(pv[wild_v], val.y[wild_v], shipped)),
        "wild ones on street val only": (shipped, tune_thresholds(pv[kv["street"]], val.y[kv["street"]], shipped)),
        "oracle: wild ones tuned on the test photos in the wild":
            (shipped, tune_thresholds(pt[wild_t], test.y[wild_t], shipped)),
    }
    print(f"validation photos per kind: { {k: int(v.sum()) for k, v in kv.items()} }")
    print("\n| thresholds | " + " | ".join(kt) + " |\n|---|" + "---|" * len(kt))
    street = {}
    for name, (tc, tw) in rows.items():
        s = kind_scores(pt, test.y, kt, wild_t, tc, tw)
        street[name] = s["street"][1]
        print(f"| {name} | " + " | ".join(f"{a:.4f} / {b:.4f}" for a, b in s.values()) + " |")
    best = max((v for k, v in street.items() if not k.startswith("oracle")))
    print("\n(mean accuracy / mean balanced accuracy on the test split)")
    print(f"target street_mean_balanced_accuracy_best_kind_thresholds: {best:.4f} (goal >= {STREET_GOAL}) "
          f"{'PASS' if best >= STREET_GOAL else 'FAIL'}")


if __name__ == "__main__":
    main()
