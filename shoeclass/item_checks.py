"""Checks on the photos of one item before and after fusion (issue 15).

* A photo that is not of the shoe (the box, a label, an invoice: ``not_footwear`` at or above its
  decision threshold while another photo of the item is footwear) is set aside: it gets weight 0 in
  the fusion for every output.
* A photo that shows nothing of an attribute (its suitability for that attribute below
  ``suit_floor`` while another kept photo reaches it, e.g. a crop of the sole only for the upper's
  straps) is set aside for that attribute.
* Photos of different products sent as one item: the network gives every photo an embedding
  (``models.py``: ImageNet features the attribute tuning left alone), which :meth:`ItemChecks.embed`
  standardises and scales to unit length; the two shoes of one product look alike even from
  different angles, two products less so. An item whose least similar pair of kept photos has
  cosine below ``min_cosine`` goes to review, naming the photo least similar to the rest. With
  three or more photos, one photo unlike all the others while those agree among themselves is
  also set aside (another product, a crop of the sole only): it must not move the decisions.

``fit`` takes the standardisation from the validation photos of real multi-photo items and chooses
``min_cosine`` so that a share ``review_rate`` of those items would be flagged; ``suit_floor`` is
fitted by ``fit_fusion.fit_floor`` (see BENCHMARKS.md for the measured trade-offs).

Example:
    >>> checks = ItemChecks(nf_threshold=0.94)
    >>> weights, aside = checks.screen(probs, suitability, names)    # (M, 14), list of dicts
    >>> checks.odd_photo(embeddings, weights)                        # None or a photo index
"""
from __future__ import annotations

import numpy as np

from .attributes import OUTPUT_KEYS

__all__ = ["ItemChecks", "pair_cosines"]

NF = OUTPUT_KEYS.index("not_footwear")


def pair_cosines(emb: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Cosine of every pair of photos that share an item: (P,) from (N, D) unit rows and (N,) ids."""
    out = []
    for it in np.unique(items):
        e = emb[items == it]
        c = e @ e.T
        out.extend(c[np.triu_indices(len(e), 1)])
    return np.asarray(out, dtype=np.float64)


class ItemChecks:
    """Set-aside rules and the different-products check of one item.

    Args:
        nf_threshold: not_footwear probability at which a photo is not of the shoe.
        suit_floor: suitability below which a photo is set aside for that attribute.
        min_cosine: embedding cosine below which two photos are taken for different products;
            None disables the check.
        mean, scale: (D,) standardisation of the network's embeddings (None: unit length only).
    """

    def __init__(self, nf_threshold: float = 0.5, suit_floor: float = 0.2, min_cosine: float | None = None,
                 mean: np.ndarray | None = None, scale: np.ndarray | None = None) -> None:
        for name, v in (("nf_threshold", nf_threshold), ("suit_floor", suit_floor)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if min_cosine is not None and not -1 <= min_cosine <= 1:
            raise ValueError(f"min_cosine must be in [-1, 1] or None, got {min_cosine}")
        if (mean is None) != (scale is None):
            raise ValueError("mean and scale must be given together")
        self.nf_threshold, self.suit_floor, self.min_cosine = nf_threshold, suit_floor, min_cosine
        self.mean = None if mean is None else np.asarray(mean, np.float64)
        self.scale = None if scale is None else np.asarray(scale, np.float64)

    def embed(self, raw: np.ndarray) -> np.ndarray:
        """(N, D) unit-length photo embeddings from the network's (N, D) ``embedding`` output.

        Raises:
            ValueError: the embedding has another width than the fitted standardisation.
        """
        z = np.asarray(raw, np.float64)
        if self.mean is not None:
            if z.shape[1] != len(self.mean):
                raise ValueError(f"embedding width {z.shape[1]} differs from the fitted {len(self.mean)}")
            z = (z - self.mean) / self.scale
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def fit(self, raw: np.ndarray, items: np.ndarray, review_rate: float = 0.03) -> "ItemChecks":
        """Fit the standardisation on the (N, D) network embeddings of validation photos that share
        an item, then choose ``min_cosine`` as the ``review_rate`` quantile of those same-item photo
        pairs' cosines ((N,) item ids; items of one photo add none).

        Raises:
            ValueError: no item with two photos, or ``review_rate`` outside (0, 1).
        """
        if not 0 < review_rate < 1:
            raise ValueError(f"review_rate must be in (0, 1), got {review_rate}")
        raw, items = np.asarray(raw, np.float64), np.asarray(items)
        multi = np.isin(items, [i for i in np.unique(items) if (items == i).sum() > 1])
        if not multi.any():
            raise ValueError("no item with two or more photos to fit min_cosine on")
        self.mean, self.scale = raw[multi].mean(0), raw[multi].std(0) + 1e-6
        self.min_cosine = float(np.quantile(pair_cosines(self.embed(raw[multi]), items[multi]), review_rate))
        return self

    def screen(self, probs: np.ndarray, suitability: np.ndarray | None,
               names: list[str] | None = None, emb: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
        """Fusion weights (M, 14) with set-aside photos at 0, and what was set aside and why.

        Args:
            probs: (M, 14) per-photo probabilities.
            suitability: (M, 14) per-photo suitability in [0, 1], or None (all 1).
            names: photo names for the report (default: their indices).
            emb: (M, D) unit-length embeddings (:meth:`embed`): with them a photo unlike all the
                others of an item of three or more is set aside (see the module docstring).

        Returns:
            weights, and one dict per photo set aside in whole or in part:
            ``{"photo", "attributes": [keys] | "all", "reason"}``.
        """
        probs = np.asarray(probs, np.float64)
        m = len(probs)
        names = names if names is not None else [str(i) for i in range(m)]
        w = np.ones_like(probs) if suitability is None else np.clip(np.asarray(suitability, np.float64), 0, 1)
        w[:, NF] = 1.0
        aside: list[dict] = []
        shoe = probs[:, NF] < self.nf_threshold
        foreign = ~shoe if shoe.any() else np.zeros(m, bool)
        w[foreign] = 0.0
        for j in np.flatnonzero(foreign):
            aside.append({"photo": names[j], "attributes": "all",
                          "reason": f"not footwear (p = {probs[j, NF]:.3f} >= {self.nf_threshold:.3f})"})
        out = foreign.copy()  # photos out of every attribute
        lone = self._lone(emb, ~foreign)
        if lone is not None:  # kept for not_footwear, and for the different-products review
            out[lone[0]] = True
            w[lone[0]] = 0.0
            w[lone[0], NF] = 1.0
            aside.append({"photo": names[lone[0]], "attributes": "all",
                          "reason": f"looks like another product than the other photos (embedding cosine "
                                    f"{lone[1]:.3f} < {self.min_cosine:.3f} to each of them)"})
        low = (w < self.suit_floor) & ~out[:, None]
        low[:, NF] = False
        usable = ((w >= self.suit_floor) & ~out[:, None]).any(0)  # (14,) some kept photo shows it
        low &= usable[None]
        w[low] = 0.0
        for j in np.flatnonzero(low.any(1)):
            keys = [OUTPUT_KEYS[k] for k in np.flatnonzero(low[j])]
            aside.append({"photo": names[j], "attributes": keys,
                          "reason": f"shows too little of these attributes (suitability < {self.suit_floor:.2f})"})
        return w, aside

    def _lone(self, emb: np.ndarray | None, kept: np.ndarray) -> tuple[int, float] | None:
        """(index, its highest cosine to another kept photo) of the one kept photo unlike every
        other while at least two others all agree; None otherwise (or without the check)."""
        idx = np.flatnonzero(kept)
        if self.min_cosine is None or emb is None or len(idx) < 3:
            return None
        c = np.asarray(emb, np.float64)[idx] @ np.asarray(emb, np.float64)[idx].T
        np.fill_diagonal(c, np.nan)
        below = np.nanmax(c, 1) < self.min_cosine  # unlike every other kept photo
        if below.sum() != 1:
            return None
        j = int(np.flatnonzero(below)[0])
        rest = np.delete(np.delete(c, j, 0), j, 1)
        if np.nanmin(rest) < self.min_cosine:  # the others disagree too: no single odd photo
            return None
        return int(idx[j]), float(np.nanmax(c[j]))

    def odd_photo(self, emb: np.ndarray | None, weights: np.ndarray | None = None) -> tuple[int, float] | None:
        """(index, cosine) of the photo least like the others when two kept photos look like
        different products; None when they look like one product (or the check is off).

        Args:
            emb: (M, D) unit-length photo embeddings (:meth:`embed`).
            weights: (M, 14) fusion weights from :meth:`screen`; photos set aside as not
                footwear (weight 0 for not_footwear too) are left out of the comparison.
        """
        if self.min_cosine is None or emb is None or len(emb) < 2:
            return None
        idx = np.arange(len(emb))
        if weights is not None:
            idx = idx[np.asarray(weights)[:, NF] > 0]
        if len(idx) < 2:
            return None
        e = np.asarray(emb, np.float64)[idx]
        c = e @ e.T
        np.fill_diagonal(c, np.nan)
        if np.nanmin(c) >= self.min_cosine:
            return None
        odd = int(np.nanargmin(np.nanmean(c, 1)))  # with two photos either; the first is named
        return int(idx[odd]), float(np.nanmin(c[odd]))

    def to_dict(self) -> dict:
        d = {"nf_threshold": self.nf_threshold, "suit_floor": self.suit_floor, "min_cosine": self.min_cosine}
        if self.mean is not None:  # float32 precision is plenty for a standardisation
            d["embedding_mean"] = [float(np.float32(v)) for v in self.mean]
            d["embedding_scale"] = [float(np.float32(v)) for v in self.scale]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ItemChecks":
        return cls(float(d["nf_threshold"]), float(d["suit_floor"]),
                   None if d.get("min_cosine") is None else float(d["min_cosine"]),
                   d.get("embedding_mean"), d.get("embedding_scale"))
