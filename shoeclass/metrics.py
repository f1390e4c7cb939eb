"""Per-attribute metrics over non-masked labels (shared/spec/evaluation.md)."""
from __future__ import annotations

import numpy as np
from scipy.special import expit
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from .attributes import MASK, OUTPUT_KEYS
from .labels import LabelTable
from .result import decisions

__all__ = ["expected_calibration_error", "attribute_metrics", "summarize", "majority_baseline", "evaluate_probs",
           "val_score", "json_safe"]

MIN_PER_CLASS = 10  # an attribute enters the mean balanced accuracy with >= 10 of each class


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width bins over every counted (photo, attribute) pair; 0.5 labels skipped."""
    keep = y != MASK
    p, t = np.asarray(probs)[keep].ravel(), np.asarray(y)[keep].ravel()
    if p.size == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(p[sel].mean() - t[sel].mean())
    return float(ece)


def attribute_metrics(probs: np.ndarray, y: np.ndarray, keys=OUTPUT_KEYS,
                      thresholds: np.ndarray | None = None, pred: np.ndarray | None = None) -> dict[str, dict]:
    """Accuracy, balanced accuracy, precision, recall, F1, ROC-AUC and ECE per attribute.

    Args:
        probs: (N, K) predicted probabilities.
        y: (N, K) labels with 0.5 as a mask.
        thresholds: (K,) decision thresholds, 0.5 when not given.
        pred: (N, K) yes/no decisions, when they are not simply ``probs >= thresholds``.
    """
    thr = np.full(len(keys), 0.5) if thresholds is None else np.asarray(thresholds)
    decided = probs >= thr if pred is None else np.asarray(pred, dtype=bool)
    out: dict[str, dict] = {}
    for k, key in enumerate(keys):
        keep = y[:, k] != MASK
        t = y[keep, k].astype(int)
        p = probs[keep, k]
        yes = decided[keep, k].astype(int)
        n_pos, n_neg = int(t.sum()), int((1 - t).sum())
        m = {"n": int(keep.sum()), "n_pos": n_pos, "n_neg": n_neg}
        if m["n"]:
            rec_pos = float((yes[t == 1] == 1).mean()) if n_pos else float("nan")
            rec_neg = float((yes[t == 0] == 0).mean()) if n_neg else float("nan")
            m.update(
                accuracy=float((yes == t).mean()),
                balanced_accuracy=float(np.nanmean([rec_pos, rec_neg])),
                precision=float(precision_score(t, yes, zero_division=0)),
                recall=float(recall_score(t, yes, zero_division=0)),
                f1=float(f1_score(t, yes, zero_division=0)),
                roc_auc=float(roc_auc_score(t, p)) if n_pos and n_neg else float("nan"),
                ece=expected_calibration_error(p[:, None], t[:, None].astype(float)),
                majority_accuracy=max(n_pos, n_neg) / m["n"],
                in_mean=bool(n_pos >= MIN_PER_CLASS and n_neg >= MIN_PER_CLASS),
            )
        out[key] = m
    return out


def summarize(per_attr: dict[str, dict]) -> dict[str, float]:
    """Mean accuracy (all counted attributes), mean balanced accuracy (>= 10 per class), baseline."""
    counted = [m for m in per_attr.values() if m["n"]]
    balanced = [m["balanced_accuracy"] for m in counted if m["in_mean"]]
    return {
        "mean_accuracy": float(np.mean([m["accuracy"] for m in counted])) if counted else float("nan"),
        "mean_balanced_accuracy": float(np.mean(balanced)) if balanced else float("nan"),
        "majority_mean_accuracy": float(np.mean([m["majority_accuracy"] for m in counted])) if counted else float("nan"),
        "n_attributes_in_balanced_mean": len(balanced),
    }


def majority_baseline(y_train: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Constant probabilities predicting each attribute's majority class in ``y_train``."""
    keep = y_train != MASK
    pos = np.where(keep, y_train, 0).sum(0) / np.maximum(keep.sum(0), 1)
    return np.broadcast_to((pos >= 0.5).astype(np.float32), y.shape).copy()


def evaluate_probs(probs: np.ndarray, table: LabelTable, thresholds: np.ndarray | None = None) -> dict:
    """Metrics on a split, whole and by worn / catalogue photos, of the yes/no that ``classify``
    gives each photo (``result.decisions``: the model's thresholds, one height)."""
    pred = decisions(probs, thresholds)
    groups = {"all": np.ones(len(table), bool), "worn": table.source == "worn",
              "catalogue": table.source != "worn"}
    out = {}
    for name, sel in groups.items():
        if sel.any():
            per = attribute_metrics(probs[sel], table.y[sel], thresholds=thresholds, pred=pred[sel])
            out[name] = {"summary": summarize(per), "per_attribute": per}
    return out


def val_score(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean balanced accuracy; on tiny validation sets (no attribute with 10 of each class) the
    mean over attributes with both classes, then the mean accuracy."""
    per = attribute_metrics(expit(logits), y)
    score = summarize(per)["mean_balanced_accuracy"]
    if np.isnan(score):
        both = [m["balanced_accuracy"] for m in per.values() if m["n_pos"] and m["n_neg"]]
        score = float(np.mean(both)) if both else summarize(per)["mean_accuracy"]
    return float(np.nan_to_num(score, nan=0.0))


# Why a metric can be undefined; JSON gets null and this reason instead of NaN.
NULL_REASONS = {
    "roc_auc": "undefined: the labels hold only one class",
    "balanced_accuracy": "undefined: no labels",
    "mean_accuracy": "undefined: no attribute has labels",
    "mean_balanced_accuracy": f"undefined: no attribute has {MIN_PER_CLASS} labels of each class",
    "majority_mean_accuracy": "undefined: no attribute has labels",
    "ece": "undefined: no labels",
}


def json_safe(obj):
    """A metrics report for JSON: each NaN becomes null, and the dict holding it gets
    ``"null_reasons": {key: why}`` (JSON has no NaN; most parsers refuse it)."""
    if isinstance(obj, dict):
        out, reasons = {}, {}
        for k, v in obj.items():
            if isinstance(v, float) and v != v:
                out[k], reasons[k] = None, NULL_REASONS.get(k, "undefined")
            else:
                out[k] = json_safe(v)
        if reasons:
            out["null_reasons"] = reasons
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
