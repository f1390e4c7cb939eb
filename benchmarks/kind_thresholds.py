"""Decision thresholds per kind of photo (issue 14, a lever tried): would thresholds tuned on the
validation photos of one kind (catalogue; in the wild = `worn` + `street`) read the test photos of
that kind better than the shipped thresholds tuned on all of validation? The kind is taken from the
labels here (an upper bound: a deployed model would have to predict it), and the last line tunes
on the test photos in the wild themselves (an oracle, not a model).

    python benchmarks/kind_thresholds.py   # ../shared/data, the shipped default; ~2 min
"""
import numpy as np, pickle, os
from shoeclass.api import Classifier
from shoeclass.decision import tune_thresholds
from shoeclass.evaluate import predict_table
from shoeclass.labels import photo_kinds, read_labels
from shoeclass.metrics import attribute_metrics, summarize
from shoeclass.result import decisions
clf = Classifier()
labels = read_labels("../shared/data")  # noqa: the benchmark reads the shared photos
cache = ".cache/kind_thresholds_probs.pkl"
if os.path.exists(cache):
    pv, pt = pickle.load(open(cache, "rb"))
else:
    val = labels.subset(labels.split == "val"); test = labels.subset(labels.split == "test")
    pv = predict_table(clf, val, progress=False); pt = predict_table(clf, test, progress=False)
    pickle.dump((pv, pt), open(cache, "wb"))
val = labels.subset(labels.split == "val"); test = labels.subset(labels.split == "test")
kv, kt = photo_kinds(val), photo_kinds(test)
wild_v = kv["worn"] | kv["street"]; wild_t = kt["worn"] | kt["street"]
print("val counts", {k: int(v.sum()) for k, v in kv.items()})
fb = clf.thresholds
def score(thr_cat, thr_wild):
    out = {}
    for g, sel in {"all": np.ones(len(test), bool), **kt}.items():
        th = np.where(wild_t[:, None], thr_wild, thr_cat)
        pred = np.zeros_like(pt, dtype=bool)
        for mask, t_ in ((~wild_t, thr_cat), (wild_t, thr_wild)):
            pred[mask] = decisions(pt[mask], t_)
        s = summarize(attribute_metrics(pt[sel], test.y[sel], thresholds=fb, pred=pred[sel]))
        out[g] = (round(s["mean_accuracy"], 4), round(s["mean_balanced_accuracy"], 4))
    return out
print("shipped", score(fb, fb))
for mpc in (5, 10):
    tc = tune_thresholds(pv[~wild_v], val.y[~wild_v], fb, min_per_class=mpc)
    tw = tune_thresholds(pv[wild_v], val.y[wild_v], fb, min_per_class=mpc)
    ts = tune_thresholds(pv[kv["street"]], val.y[kv["street"]], fb, min_per_class=mpc)
    print(f"mpc {mpc} cat-tuned+wild-tuned", score(tc, tw))
    print(f"mpc {mpc} cat-tuned+street-tuned", score(tc, ts))
    print(f"mpc {mpc} shipped+wild-tuned", score(fb, tw))
    print("  thr shipped", np.round(fb, 2).tolist()); print("  thr wild", np.round(tw, 2).tolist()); print("  thr cat", np.round(tc,2).tolist())
# oracle on test wild
to = tune_thresholds(pt[wild_t], test.y[wild_t], fb, min_per_class=10)
print("oracle test-wild thresholds", score(fb, to))
