"""Refit the fusion and the item checks of a model on real multi-photo items (issue 15).

Real items are the photos of a labels.csv split that share an ``item`` (in the public data, the
two shoes of one pair in a street photo). ``shoeclass fit-fusion --model DIR --data DIR`` runs the
model on the validation split's multi-photo items and rewrites the ``decision`` of ``DIR/model.json``:

* the fusion's correlation rho_k, refitted by log-loss on the real items for every output with at
  least ``min_labelled`` labelled items; the others keep the value fitted on simulated items at
  training time (the fallback);
* ``min_cosine`` of the different-products check, at the ``review_rate`` quantile of the real
  items' photo-pair cosines;
* ``suit_floor`` of the set-aside rule: the lowest of ``FLOORS`` at which adding a sole-only crop
  (the bottom ``SOLE`` of one of its photos) to every item changes at most ``max_change`` of the
  items' decisions (a photo showing nothing of an attribute must not move it);
* ``nf_threshold`` of the set-aside rule: the model's own not_footwear decision threshold, so a
  photo is set aside as not footwear exactly when the model decides it is not footwear.

The tensor file is untouched; the card is checksummed again (``checkpoint.update_card``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .attributes import MASK, OUTPUT_KEYS
from .checkpoint import update_card
from .decision import DecisionLayer
from .fusion import BayesianFusion
from .result import decide

__all__ = ["item_arrays", "item_labels", "changed_decisions", "fit_floor", "refit_decision", "fit_fusion"]

logger = logging.getLogger(__name__)

NF = OUTPUT_KEYS.index("not_footwear")
SOLE = 0.3  # the bottom share of a photo kept as a sole-only crop
FLOORS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def item_labels(y: np.ndarray) -> np.ndarray:
    """(K,) label of an item from its photos' (M, K) labels: the value the photos agree on,
    ignoring 0.5; photos that disagree leave it masked (shared/spec/evaluation.md)."""
    out = np.full(y.shape[1], MASK, dtype=np.float64)
    for k in range(y.shape[1]):
        vals = set(y[y[:, k] != MASK, k].tolist())
        if len(vals) == 1:
            out[k] = vals.pop()
    return out


def item_arrays(items: np.ndarray, *per_photo: np.ndarray, min_photos: int = 2) -> tuple[list[np.ndarray], ...]:
    """Group per-photo rows by item: (item ids, then one list of (M_i, ...) arrays per input),
    keeping items of at least ``min_photos`` photos, in order of first appearance."""
    items = np.asarray(items)
    ids = [i for i in dict.fromkeys(items.tolist()) if (items == i).sum() >= min_photos]
    return (ids,) + tuple([a[items == i] for i in ids] for a in per_photo)


def _pad(groups: list[np.ndarray]) -> np.ndarray:
    m = max(len(g) for g in groups)
    out = np.full((len(groups), m) + groups[0].shape[1:], np.nan)
    for i, g in enumerate(groups):
        out[i, :len(g)] = g
    return out


def changed_decisions(decision: DecisionLayer, probs: list[np.ndarray], suit: list[np.ndarray],
                      extra_probs: np.ndarray, extra_suit: np.ndarray) -> float:
    """Share of the items' decisions that change when item i gets the photo (extra_probs[i],
    extra_suit[i]) added."""
    thr, changed = decision.thresholds, 0
    for p, s, ep, es in zip(probs, suit, extra_probs, extra_suit):
        before = decide(decision.fuse(p, weights=decision.screen(p, s)[0]), thr)
        p2, s2 = np.vstack([p, ep]), np.vstack([s, es])
        after = decide(decision.fuse(p2, weights=decision.screen(p2, s2)[0]), thr)
        changed += sum(before[k] != after[k] for k in before)
    return changed / max(len(probs) * len(OUTPUT_KEYS), 1)


def fit_floor(decision: DecisionLayer, probs: list[np.ndarray], suit: list[np.ndarray],
              crop_probs: np.ndarray, crop_suit: np.ndarray, max_change: float = 0.005) -> dict[float, float]:
    """Set ``decision.checks.suit_floor`` to the lowest of ``FLOORS`` whose share of changed
    decisions with the crops added is at most ``max_change`` (else the one changing fewest);
    returns the share measured at each floor."""
    shares = {}
    for f in FLOORS:
        decision.checks.suit_floor = f
        shares[f] = changed_decisions(decision, probs, suit, crop_probs, crop_suit)
    ok = [f for f in FLOORS if shares[f] <= max_change]
    decision.checks.suit_floor = ok[0] if ok else min(FLOORS, key=lambda f: (shares[f], f))
    return shares


def refit_decision(decision: DecisionLayer, probs: np.ndarray, suitability: np.ndarray | None,
                   embedding: np.ndarray | None, y: np.ndarray, items: np.ndarray,
                   min_labelled: int = 10, review_rate: float = 0.03,
                   crop_probs: np.ndarray | None = None, crop_suit: np.ndarray | None = None,
                   max_change: float = 0.005) -> dict:
    """Refit ``decision``'s fusion correlation and item checks on real multi-photo items, in place.

    Args:
        probs, suitability: (N, 14) per-photo outputs of the model (``Classifier.predict_tensors``).
        embedding: (N, D) the network's raw embeddings (``Classifier.network_outputs``).
        y: (N, 14) photo labels; items: (N,) item ids (items of one photo are ignored).
        min_labelled: fewest labelled items for an output's rho to be refitted on real items.
        review_rate: share of real items the different-products check may flag.
        crop_probs, crop_suit: (N, 14) outputs for a sole-only crop of every photo; with them
            ``suit_floor`` is fitted (:func:`fit_floor`), otherwise left as it is.
        max_change: share of decisions the crops may change.

    Returns:
        A report: items used, per output whether rho came from real items and its old and new value.

    Raises:
        ValueError: no item with two photos, or a decision layer without a fusion.
    """
    if decision.fusion is None:
        raise ValueError("the model's decision layer has no fusion to refit")
    # a photo is set aside as not footwear exactly when the model's own not_footwear decision says
    # so (that threshold is tuned on validation with the others); the default 0.5 set aside street
    # crops the decision layer calls footwear
    decision.checks.nf_threshold = float(decision.thresholds[NF])
    s = np.ones_like(probs) if suitability is None else suitability
    ids, p, w, yy = item_arrays(items, probs, s, y)
    if not ids:
        raise ValueError("no item with two or more photos to fit the fusion on")
    shares = None
    if crop_probs is not None:
        _, cp, cs = item_arrays(items, crop_probs, np.ones_like(crop_probs) if crop_suit is None else crop_suit)
        shares = fit_floor(decision, p, w, np.stack([c[0] for c in cp]), np.stack([c[0] for c in cs]), max_change)
    screened = [decision.screen(pi, wi) for pi, wi in zip(p, w)]
    vp, vw = _pad(p), np.nan_to_num(_pad([sw for sw, _ in screened]))
    y_item = np.stack([item_labels(g) for g in yy])  # (N_items, 14)
    real = BayesianFusion(priors=decision.fusion.priors_).fit(vp, y_item, vw)
    old = decision.fusion.rho_.copy()
    labelled = (y_item != MASK).sum(0)
    use = labelled >= min_labelled
    decision.fusion.rho_ = np.where(use, real.rho_, old)
    if embedding is not None:
        decision.checks.fit(embedding, items, review_rate)
    logger.info("fusion refitted on %d real items; rho from real items for %d of %d outputs",
                len(ids), int(use.sum()), len(OUTPUT_KEYS))
    return {"items": len(ids), "photos": int(sum(len(g) for g in p)), "labelled_items": labelled.tolist(),
            "rho_from_real_items": use.tolist(), "rho_before": old.tolist(),
            "rho": decision.fusion.rho_.tolist(),
            "checks": {k: v for k, v in decision.checks.to_dict().items() if not k.startswith("embedding_")},
            "crop_changes_by_floor": shares}


def fit_fusion(model: str | Path | None, data: str | Path, split: str = "val", **kw) -> dict:
    """Run the model on ``split``'s multi-photo items of ``data`` and rewrite its model.json.

    Returns:
        :func:`refit_decision`'s report.
    """
    import torch

    from .api import Classifier
    from .images import load_image
    from .labels import read_labels

    clf = Classifier(model)
    table = read_labels(data)
    t = table.subset(table.split == split)
    ids, = item_arrays(t.item)
    t = t.subset(np.isin(t.item, ids))
    outs: dict[str, list] = {}
    paths = t.paths()
    for i in range(0, len(t), clf.batch_size):
        imgs = [load_image(p) for p in paths[i:i + clf.batch_size]]
        crops = [im.crop((0, int(im.size[1] * (1 - SOLE)), im.size[0], im.size[1])) for im in imgs]
        for prefix, batch in (("", imgs), ("crop_", crops)):
            raw = clf.network_outputs(torch.stack([clf.preset(im) for im in batch]))
            for k, v in dict(clf.photo_outputs(raw), embedding=raw.get("embedding")).items():
                if v is not None:
                    outs.setdefault(prefix + k, []).append(v)
    o = {k: np.concatenate(v) for k, v in outs.items()}
    report = refit_decision(clf.decision, o["probs"], o.get("suitability"), o.get("embedding"), t.y, t.item,
                            crop_probs=o["crop_probs"], crop_suit=o.get("crop_suitability"), **kw)
    training = dict(clf.meta.get("training", {}), fusion_refit={"data": str(data), "split": split,
                                                                **{k: report[k] for k in ("items", "photos")}})
    update_card(clf.path, {"decision": clf.decision.to_dict(), "training": training})
    return report
