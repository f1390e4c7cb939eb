"""The result of classifying one item's photos, and its JSON form (the integrators' contract).

``ItemResult.to_dict()`` (schema version ``SCHEMA_VERSION``)::

    {
      "schema_version": "1",
      "status": "ok" | "needs_review" | "error",
      "attributes": {key: p, ...},            # 13 attributes + not_footwear, fused over the photos
      "decisions": {key: bool, ...},          # p >= threshold; exactly one height is true
      "photos": [{"photo": name, "attributes": {key: p} | null,
                  "suitability": {key: s} | null, "cluster": {...} | null,
                  "materials": {"upper": {class: p}, "sole": {class: p}} | null, "error": str | null}],
      "matrix": [[p, ...], ...],              # (M_ok, 14) per-photo matrix, OUTPUT_KEYS order
      "keys": [...],                          # the column order of "matrix"
      "cluster": {...} | null,                # most likely cluster, atypical attributes firing
      "tariff": {...} | null,                 # shoeclass.tariff.TariffDecision.to_dict()
      "materials": {"upper": {class: p}, "sole": {class: p}} | null,  # fused; null without material heads
      "check": {"code", "p_consistent", "consistent", "p_code", "implied_facts", "conflicts"} | null,
      "model": {"name": ..., "backbone": ..., "sha256": ..., "members": n, "mirror": bool,
                "runtime": "torch fp32" | "torch bf16" | "openvino bf16" | ...},
      "set_aside": [{"photo": name, "attributes": "all" | [key, ...], "reason": str}],
      "review": {"reason": "different_products", "photo": name, "detail": str} | null
    }

A photo set aside for an attribute had no weight in that attribute's fused value; ``review`` set
makes the status ``needs_review`` whatever the tariff says.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .attributes import HEIGHT_KEYS, OUTPUT_KEYS

__all__ = ["SCHEMA_VERSION", "PhotoResult", "ItemResult", "decide", "decisions"]

SCHEMA_VERSION = "1"


def _as_dict(row: np.ndarray | None) -> dict[str, float] | None:
    return None if row is None else {k: round(float(v), 6) for k, v in zip(OUTPUT_KEYS, row)}


def decisions(probs: np.ndarray, thresholds: np.ndarray | None = None) -> np.ndarray:
    """(N, 14) yes/no of (N, 14) probabilities: the one rule ``classify`` and ``evaluate`` share.

    Each output is yes at ``p >= threshold``; the four heights are exclusive, so exactly one is
    yes (none for not footwear): the one furthest above its threshold in log-odds, which is the
    one that passes when only one does.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    thr = np.clip(np.full(len(OUTPUT_KEYS), 0.5) if thresholds is None else np.asarray(thresholds, float), 1e-7, 1 - 1e-7)
    out = p >= thr  # (N, 14)
    heights = [OUTPUT_KEYS.index(k) for k in HEIGHT_KEYS]
    margin = np.log(p[:, heights] / (1 - p[:, heights])) - np.log(thr[heights] / (1 - thr[heights]))  # (N, 4)
    out[:, heights] = False
    top = np.asarray(heights)[margin.argmax(1)]
    out[np.arange(len(p)), top] = True
    out[:, heights] &= ~out[:, [OUTPUT_KEYS.index("not_footwear")]]
    return out


def decide(probs: np.ndarray, thresholds: np.ndarray | None = None) -> dict[str, bool]:
    """Yes/no per output of one (14,) row (see :func:`decisions`)."""
    return {k: bool(v) for k, v in zip(OUTPUT_KEYS, decisions(np.asarray(probs)[None], thresholds)[0])}


@dataclass
class PhotoResult:
    """One photo: its 14 probabilities, or the error that kept it out."""

    photo: str
    probs: np.ndarray | None = None  # (14,)
    suitability: np.ndarray | None = None  # (14,)
    cluster: dict | None = None
    error: str | None = None
    materials: dict | None = None  # {"upper": {class: p}, "sole": {class: p}}

    def to_dict(self) -> dict:
        return {"photo": self.photo, "attributes": _as_dict(self.probs),
                "suitability": _as_dict(self.suitability), "cluster": self.cluster,
                "materials": self.materials, "error": self.error}


@dataclass
class ItemResult:
    """All photos of one item, their fused attributes and what follows from them."""

    photos: list[PhotoResult]
    probs: np.ndarray | None  # (14,) fused; None when no photo could be read
    thresholds: np.ndarray | None = None
    cluster: dict | None = None
    tariff: dict | None = None
    model: dict = field(default_factory=dict)
    set_aside: list[dict] = field(default_factory=list)
    review: dict | None = None  # item-level reason for review (photos of different products)
    materials: dict | None = None  # fused {"upper": {class: p}, "sole": {class: p}}
    check: dict | None = None  # check.check_code of a declared code

    @property
    def matrix(self) -> np.ndarray:
        """(M_ok, 14) per-photo probabilities of the photos that were read."""
        rows = [p.probs for p in self.photos if p.probs is not None]
        return np.stack(rows) if rows else np.zeros((0, len(OUTPUT_KEYS)))

    @property
    def status(self) -> str:
        if self.probs is None:
            return "error"
        if self.review is not None:
            return "needs_review"
        if self.tariff is not None:
            return self.tariff["status"]
        return "needs_review" if (self.cluster or {}).get("wrong_cluster") else "ok"

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "attributes": _as_dict(self.probs),
            "decisions": decide(self.probs, self.thresholds) if self.probs is not None else None,
            "photos": [p.to_dict() for p in self.photos],
            "matrix": np.round(self.matrix, 6).tolist(),
            "keys": list(OUTPUT_KEYS),
            "cluster": self.cluster,
            "tariff": self.tariff,
            "materials": self.materials,
            "check": self.check,
            "model": self.model,
            "set_aside": self.set_aside,
            "review": self.review,
        }
