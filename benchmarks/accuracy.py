"""Accuracy benchmark (issues 2 and 14): the shipped model, lenet and the transfer backbones on ../shared/data.

Evaluates the shipped default (``--models shipped``: weights/default as it is) and trains each
other model with its config (or reuses a trained model folder with --reuse), end to end (photo
files -> preprocessing -> trunk -> heads -> calibration -> thresholds) on the test split: all
photos and each kind of photo (catalogue, `worn`: shoes on feet, `street`: crops of street photos),
per attribute and as means, next to the majority-class baseline. Measured as
shared/spec/evaluation.md says.

    python benchmarks/accuracy.py --data ../shared/data [--reuse] [--models shipped efficientnet_lite0 lenet]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from shoeclass.api import Classifier
from shoeclass.attributes import OUTPUT_KEYS
from shoeclass.checkpoint import DEFAULT_MODEL
from shoeclass.decision import tune_thresholds
from shoeclass.evaluate import predict_table
from shoeclass.labels import photo_kinds, read_labels
from shoeclass.metrics import attribute_metrics, majority_baseline, summarize
from shoeclass.result import decisions
from shoeclass.training import is_ensemble_config, load_config, train, train_ensemble

TRANSFER = ("efficientnet_lite0", "efficientnet_lite2", "vgg16", "vgg19")
SHIPPED = DEFAULT_MODEL / "model.json"
TARGETS = {  # name: (model, group, metric, goal); "transfer": the shipped default when it is among the
    # models measured, else the transfer model with the best mean balanced accuracy
    "street_mean_balanced_accuracy": ("transfer", "street", "mean_balanced_accuracy", 0.85),
    "street_high_heel_recall": ("transfer", "street", "high_heel.recall", 0.80),
    "worn_mean_balanced_accuracy": ("transfer", "worn", "mean_balanced_accuracy", 0.90),
    "catalogue_mean_balanced_accuracy": ("transfer", "catalogue", "mean_balanced_accuracy", 0.97),
    "all_mean_balanced_accuracy": ("transfer", "all", "mean_balanced_accuracy", 0.96),
    "all_mean_accuracy": ("transfer", "all", "mean_accuracy", 0.98),
}


def table(per: dict[str, dict], base: dict[str, dict]) -> str:
    rows = ["| attribute | n | pos | accuracy | balanced acc. | majority acc. |", "|---|---|---|---|---|---|"]
    for key in OUTPUT_KEYS:
        m, b = per[key], base[key]
        if not m["n"]:
            continue
        star = "" if m["in_mean"] else " *"
        rows.append(f"| {key}{star} | {m['n']} | {m['n_pos']} | {m['accuracy']:.4f} | "
                    f"{m['balanced_accuracy']:.4f} | {b['accuracy']:.4f} |")
    return "\n".join(rows)


def tradeoff(clf: Classifier, labels, test, pt: np.ndarray) -> dict:
    """Test means under other per-attribute thresholds: chosen on val for accuracy alone, and
    the best achievable on test itself (an oracle, not a model) for accuracy alone and for
    accuracy + balanced accuracy. Shows whether one threshold set can meet both targets.
    ``pt``: the model's test probabilities, already computed."""
    val = labels.subset(labels.split == "val")
    pv = predict_table(clf, val, progress=False)
    fb = clf.thresholds
    rows = {"shipped thresholds (val: accuracy + balanced accuracy)": fb,
            "val: accuracy alone": tune_thresholds(pv, val.y, fb, accuracy_weight=1.0, balanced_weight=0.0),
            "oracle on test: accuracy alone": tune_thresholds(pt, test.y, fb, accuracy_weight=1.0, balanced_weight=0.0),
            "oracle on test: accuracy + balanced accuracy": tune_thresholds(pt, test.y, fb)}
    out = {}
    print("\nthreshold trade-off (test split, same probabilities):\n")
    print("| thresholds | mean accuracy | mean balanced accuracy |\n|---|---|---|")
    for name, thr in rows.items():
        s = summarize(attribute_metrics(pt, test.y, thresholds=thr, pred=decisions(pt, thr)))
        out[name] = {"mean_accuracy": s["mean_accuracy"], "mean_balanced_accuracy": s["mean_balanced_accuracy"]}
        print(f"| {name} | {s['mean_accuracy']:.4f} | {s['mean_balanced_accuracy']:.4f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--models", nargs="+", default=["shipped"],
                    help="'shipped' (weights/default as it is) and/or config names under configs/")
    ap.add_argument("--runs", default="runs", help="where model folders are written / reused")
    ap.add_argument("--reuse", action="store_true", help="evaluate runs/<model> if it exists instead of training")
    ap.add_argument("--json", help="write all measured figures here")
    ap.add_argument("--tradeoff", action="store_true", help="also print the threshold trade-off (predicts val again)")
    args = ap.parse_args()

    labels = read_labels(args.data)
    test = labels.subset(labels.split == "test")
    y_train = labels.y[labels.split == "train"]
    groups = {"all": np.ones(len(test), bool), **photo_kinds(test)}
    results: dict[str, dict] = {}
    test_probs: dict[str, np.ndarray] = {}
    classifiers: dict[str, Classifier] = {}
    for name in args.models:
        out = SHIPPED.parent if name == "shipped" else Path(args.runs) / name
        wall = None
        if name != "shipped" and not (args.reuse and (out / "model.json").is_file()):
            t0 = time.time()
            config, over = f"configs/{name}.yaml", {"data": args.data, "out": str(out), "progress": False}
            train_ensemble(config, over) if is_ensemble_config(config) else train(load_config(config, over))
            wall = time.time() - t0
        meta = json.loads((out / "model.json").read_text())
        wall = wall if wall is not None else meta["training"]["history"].get("wall_seconds") or 0.0
        t0 = time.time()
        clf = classifiers[name] = Classifier(out)
        probs = test_probs[name] = predict_table(clf, test, progress=False)
        eval_s = time.time() - t0
        results[name] = {"backbone": meta["backbone"], "sha256": meta["sha256"], "train_wall_seconds": wall,
                         "eval_seconds": round(eval_s, 1)}
        print(f"\n## {name}  (decision thresholds tuned on val: {np.round(clf.thresholds, 2).tolist()})")
        print(f"(training wall time {wall:.0f} s; test evaluation {eval_s:.0f} s for {len(test)} photos)")
        pred = decisions(probs, clf.thresholds)  # the yes/no classify gives each photo
        for g, sel in groups.items():
            per = attribute_metrics(probs[sel], test.y[sel], thresholds=clf.thresholds, pred=pred[sel])
            base = attribute_metrics(majority_baseline(y_train, test.y[sel]), test.y[sel])
            s, sb = summarize(per), summarize(base)
            results[name][g] = {"summary": s, "majority": sb, "per_attribute": per}
            print(f"\n### {name} / {g}: {int(sel.sum())} photos — mean accuracy {s['mean_accuracy']:.4f} "
                  f"(majority {sb['mean_accuracy']:.4f}), mean balanced accuracy "
                  f"{s['mean_balanced_accuracy']:.4f} (majority {sb['mean_balanced_accuracy']:.4f}, "
                  f"{s['n_attributes_in_balanced_mean']} attributes)\n")
            print(table(per, base))
    print("\n* fewer than 10 labels of a class in this group: left out of the mean balanced accuracy\n")
    transfer = [m for m in results if results[m]["backbone"] in TRANSFER]
    if transfer:
        shipped = json.loads(SHIPPED.read_text())["sha256"] if SHIPPED.is_file() else None
        best = max(transfer, key=lambda m: results[m]["all"]["summary"]["mean_balanced_accuracy"])
        best = next((m for m in transfer if results[m]["sha256"] == shipped), best)
        results["transfer"] = results[best]
        print(f"transfer model for the targets: {best} "
              f"({'the shipped default' if results[best]['sha256'] == shipped else 'best mean balanced accuracy'})")
        if args.tradeoff:
            results[best]["threshold_tradeoff"] = tradeoff(classifiers[best], labels, test, test_probs[best])
    for tname, (model, group, metric, goal) in TARGETS.items():
        if model not in results:
            continue
        attr, _, stat = metric.rpartition(".")
        v = results[model][group]["per_attribute"][attr][stat] if attr else results[model][group]["summary"][metric]
        print(f"target {tname}: {v:.4f} (goal >= {goal}) {'PASS' if v >= goal else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in results.items() if k != "transfer"}, indent=2))


if __name__ == "__main__":
    main()
