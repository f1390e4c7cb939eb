"""The decision layer: calibrated photos -> cluster -> fused item attributes (paper, section 1).

Fitted on the validation split after the heads, stored in the model metadata:

* temperature scaling per head and for the cluster gate (``calibration.py``);
* the attribute clusters found by hierarchical clustering of the training labels
  (``hierarchy.py``) and the gate's posterior over them, with the wrong-cluster check;
* Bayesian fusion of the item's M×14 matrix with per-photo suitability weights and a
  correlation correction fitted on simulated multi-photo validation items (``fusion.py``), refitted
  on real multi-photo items by ``fit_fusion.py``;
* the set-aside rules and the different-products check (``item_checks.py``).
"""
from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

from .attributes import MASK, OUTPUT_KEYS
from .calibration import SoftmaxTemperature, TemperatureScaling
from .fusion import BayesianFusion, label_priors
from .hierarchy import AttributeClusters
from .item_checks import ItemChecks
from .labels import class_weights

__all__ = ["DecisionLayer", "tune_thresholds", "prior_thresholds", "effective_prior"]

NF = OUTPUT_KEYS.index("not_footwear")


class DecisionLayer:
    """Turns the raw head outputs of an item's photos into item probabilities and a cluster.

    Args:
        calibration: per-head temperatures (None: raw sigmoid).
        clusters: the attribute clusters; with ``gate_calibration`` enables the cluster stage.
        gate_calibration: the gate's softmax temperature.
        fusion: the Bayesian fusion (None: mean of the photos).
        thresholds: (14,) per-output decision thresholds on calibrated probabilities (None: 0.5).
        checks: set-aside rules and the different-products check (None: defaults at the
            not_footwear threshold, no different-products check).
    """

    def __init__(self, calibration: TemperatureScaling | None = None, clusters: AttributeClusters | None = None,
                 gate_calibration: SoftmaxTemperature | None = None, fusion: BayesianFusion | None = None,
                 thresholds: np.ndarray | None = None, checks: ItemChecks | None = None) -> None:
        self.calibration, self.clusters = calibration, clusters
        self.gate_calibration, self.fusion = gate_calibration, fusion
        self.thresholds = np.full(len(OUTPUT_KEYS), 0.5) if thresholds is None else np.asarray(thresholds, float)
        self.checks = checks if checks is not None else ItemChecks(nf_threshold=float(self.thresholds[NF]))

    def photo_probs(self, logits: np.ndarray, gate_logits: np.ndarray | None = None) -> np.ndarray:
        """(M, 14) per-photo probabilities: calibrated heads, combined with the cluster posterior
        when the model has a gate (``clusters.pull`` sets how far a cluster's fixed attributes pull,
        chosen on validation; 0 leaves the heads as they are)."""
        probs = self.calibration.transform(logits) if self.calibration else expit(logits)
        if self.clusters is not None and gate_logits is not None and self.clusters.pull > 0:
            probs = self.clusters.combine(self.gate_probs(gate_logits), probs)
        return probs

    def gate_probs(self, gate_logits: np.ndarray) -> np.ndarray:
        """(M, C) calibrated cluster posteriors per photo."""
        if self.gate_calibration is not None:
            return self.gate_calibration.transform(gate_logits)
        e = np.exp(gate_logits - gate_logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def weights(self, suitability: np.ndarray | None) -> np.ndarray | None:
        """(M, 14) fusion weights: how suitable each photo is for each output (not_footwear: 1)."""
        if suitability is None:
            return None
        w = np.clip(suitability, 0.0, 1.0).copy()
        w[:, NF] = 1.0
        return w

    def fuse(self, probs: np.ndarray, suitability: np.ndarray | None = None,
             weights: np.ndarray | None = None) -> np.ndarray:
        """(M, 14) -> (14,) item probabilities; one photo is its own answer (the thresholds were
        tuned on single photos), so ``classify`` and ``evaluate`` say the same of it. ``weights``
        (M, 14) from :meth:`screen` replace the suitability weights; when they leave one photo
        (the others set aside as not footwear), that photo is the answer."""
        if weights is not None:
            kept = weights[:, NF] > 0
            if kept.sum() == 1:
                return probs[kept][0]
        if len(probs) == 1 or (self.fusion is None and weights is None):
            return probs.mean(0)
        if self.fusion is None:
            return (probs * weights).sum(0) / np.maximum(weights.sum(0), 1e-12)
        return self.fusion.fuse(probs, self.weights(suitability) if weights is None else weights)

    def screen(self, probs: np.ndarray, suitability: np.ndarray | None = None,
               names: list[str] | None = None, emb: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
        """Fusion weights (M, 14) with the photos set aside at 0, and the set-aside report
        (``ItemChecks.screen``)."""
        return self.checks.screen(probs, suitability, names, emb)

    def item(self, probs: np.ndarray, gate_probs: np.ndarray | None = None,
             suitability: np.ndarray | None = None,
             weights: np.ndarray | None = None) -> tuple[np.ndarray, dict | None]:
        """The item's fused probabilities (14,) and its cluster, from the (M, 14) per-photo
        probabilities (:meth:`photo_probs`) and the (M, C) per-photo cluster posteriors; photos
        set aside as not footwear (:meth:`screen`) leave the cluster posterior too."""
        fused = self.fuse(probs, suitability, weights)  # (14,)
        cluster = None
        if self.clusters is not None and gate_probs is not None:
            kept = np.ones(len(gate_probs), bool) if weights is None else weights[:, NF] > 0
            post = gate_probs[kept if kept.any() else slice(None)].mean(0)  # (C,) the item's cluster posterior
            best = int(np.argmax(post))
            firing = self.clusters.atypical_firing(post, fused)
            cluster = {"name": self.clusters.clusters_[best].name, "index": best,
                       "probability": round(float(post[best]), 6), "atypical_firing": firing,
                       "wrong_cluster": bool(firing)}
        return fused, cluster

    def to_dict(self) -> dict:
        return {"calibration": self.calibration.to_dict() if self.calibration else None,
                "clusters": self.clusters.to_dict() if self.clusters else None,
                "gate_calibration": self.gate_calibration.to_dict() if self.gate_calibration else None,
                "fusion": self.fusion.to_dict() if self.fusion else None,
                "thresholds": [float(t) for t in self.thresholds], "item_checks": self.checks.to_dict()}

    @classmethod
    def from_dict(cls, d: dict | None) -> "DecisionLayer":
        d = d or {}
        return cls(TemperatureScaling.from_dict(d["calibration"]) if d.get("calibration") else None,
                   AttributeClusters.from_dict(d["clusters"]) if d.get("clusters") else None,
                   SoftmaxTemperature.from_dict(d["gate_calibration"]) if d.get("gate_calibration") else None,
                   BayesianFusion.from_dict(d["fusion"]) if d.get("fusion") else None,
                   d.get("thresholds"),
                   ItemChecks.from_dict(d["item_checks"]) if d.get("item_checks") else None)


def tune_thresholds(probs: np.ndarray, y: np.ndarray, fallback: np.ndarray | None = None,
                    min_per_class: int = 10, accuracy_weight: float = 1.0, balanced_weight: float = 1.0) -> np.ndarray:
    """(K,) decision thresholds chosen on validation: per output, the one maximising accuracy plus
    balanced accuracy (the two figures the evaluation reports; the weights change the mix). Where
    validation has fewer than ``min_per_class`` labels of a class, ``fallback`` (default 0.5; see
    :func:`prior_thresholds`)."""
    thr = np.full(y.shape[1], 0.5) if fallback is None else np.asarray(fallback, dtype=np.float64).copy()
    grid = np.linspace(0.02, 0.98, 49)
    for k in range(y.shape[1]):
        known = y[:, k] != MASK
        t, p = y[known, k] == 1, probs[known, k]
        if t.sum() < min_per_class or (~t).sum() < min_per_class:
            continue
        pred = p[None, :] >= grid[:, None]  # (G, n)
        rec_pos, rec_neg = pred[:, t].mean(1), (~pred[:, ~t]).mean(1)
        acc = (pred == t[None]).mean(1)
        thr[k] = grid[int(np.argmax(accuracy_weight * acc + balanced_weight * (rec_pos + rec_neg) / 2))]
    return thr


def prior_thresholds(y_train: np.ndarray, balance: float) -> np.ndarray:
    """(K,) thresholds for outputs too rare to tune on validation: the probability at which a head
    trained under class reweighting (effective prior, see :func:`effective_prior`) means even odds
    under the training label frequencies, i.e. the Bayes decision for accuracy. A balanced head
    for an attribute seen on 0.1 % of photos must be 99.9 % sure before it says present."""
    pi = np.clip(label_priors(y_train), 1e-3, 1 - 1e-3)
    return expit(logit(effective_prior(y_train, balance)) - logit(pi))


def effective_prior(y: np.ndarray, balance: float) -> np.ndarray:
    """The class prior the reweighted heads were effectively trained under (0.5 at balance 1)."""
    pi = label_priors(y)
    w = class_weights(y, balance)
    return np.clip(pi * w[1] / (pi * w[1] + (1 - pi) * w[0]), 0.01, 0.99)
