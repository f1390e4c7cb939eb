"""Test split of ../shared/data: metrics of the shipped model under the old decision rule (each
output at its threshold) and the shared one (result.decisions: heights exclusive)."""
import json, sys, time
import numpy as np
from shoeclass.api import Classifier
from shoeclass.evaluate import predict_table
from shoeclass.labels import read_labels
from shoeclass.metrics import attribute_metrics, summarize, evaluate_probs
from shoeclass.result import decisions
labels = read_labels(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
test = labels.subset(labels.split == "test")
clf = Classifier()
t0 = time.time()
probs = predict_table(clf, test, progress=False)
np.save("/tmp/decision_rule_probs.npy", probs)
print(f"{len(test)} photos in {time.time()-t0:.0f} s")
groups = {"all": np.ones(len(test), bool), "catalogue": test.source != "worn", "worn": test.source == "worn"}
pred = decisions(probs, clf.thresholds)
out = {}
for g, sel in groups.items():
    old = summarize(attribute_metrics(probs[sel], test.y[sel], thresholds=clf.thresholds))
    new = summarize(attribute_metrics(probs[sel], test.y[sel], thresholds=clf.thresholds, pred=pred[sel]))
    out[g] = {"threshold_each": old, "shared_decisions": new}
    print(g, int(sel.sum()), "old", round(old["mean_accuracy"], 4), round(old["mean_balanced_accuracy"], 4),
          "new", round(new["mean_accuracy"], 4), round(new["mean_balanced_accuracy"], 4))
old = attribute_metrics(probs, test.y, thresholds=clf.thresholds)
new = attribute_metrics(probs, test.y, thresholds=clf.thresholds, pred=pred)
for k in old:
    if old[k].get("accuracy") != new[k].get("accuracy"):
        print(k, round(old[k]["accuracy"], 4), round(new[k]["accuracy"], 4), round(old[k]["balanced_accuracy"], 4), round(new[k]["balanced_accuracy"], 4))
json.dump(out, open("/tmp/decision_rule.json", "w"), indent=1)
