"""Attribute clusters: the hierarchy of the seed paper, section 1 (shared/spec/attributes.md).

The label vectors fall into a few clusters (boots, sandals and open shoes, closed low shoes, ...,
not footwear) within which only a few attributes vary. A gate predicts the cluster, the heads
decide the attributes that vary in it, and an attribute fixed at 0 in the chosen cluster that
fires anyway reveals a wrong cluster.

Clustering (:meth:`AttributeClusters.fit`): rows with ``not_footwear = 1`` form their own cluster.
The footwear rows are reduced to their unique label patterns (a few hundred at most, not N rows);
patterns with at least ``min_observed`` judged attributes are clustered by count-weighted average
linkage (UPGMA, identical to average linkage on the expanded rows) with a mask-aware distance: the
share of co-judged attributes on which two patterns disagree. The tree (a scipy linkage matrix)
is cut at the smallest number of clusters where each cluster, after every other row has been
assigned to its nearest cluster, varies in at most ``max_varying`` attributes. Clusters smaller
than ``min_size`` of the rows are dissolved into their nearest cluster.

Vocabulary: for cluster c, attribute a is *fixed* (``typical_``) when its minority value is at
most ``tol`` of the rows judging it, *varying* otherwise, and *unknown* when no row judges it
(the 13 attributes in the not-footwear cluster). The paper's "atypical of the cluster" means fixed
at 0 here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import fcluster

from ._linkage import _codes, _disagreement, average_linkage
from .attributes import MASK, NOT_FOOTWEAR, OUTPUT_KEYS

__all__ = ["Cluster", "AttributeClusters", "average_linkage"]

_MAX_TREE_PATTERNS = 1500  # the tree is O(P^3); rarer patterns are assigned afterwards
_SHORT = {"vamp_openings": "open vamp", "vamp_straps": "strappy", "straps_plugged": "plugged thong",
          "toe_strap": "toe strap", "waterproof": "waterproof", "wood_base": "wooden base",
          "sports": "sports", "indoor": "indoor", "high_heel": "high heel", "height_low": "low",
          "height_ankle": "ankle", "height_knee": "knee", "height_over_knee": "over-knee",
          NOT_FOOTWEAR.key: "not footwear"}


@dataclass(frozen=True)
class Cluster:
    """One cluster: ``mean`` per attribute (None = never judged), ``typical`` maps fixed
    attributes to their value 0/1, ``varying`` lists the attributes the heads must decide."""

    name: str
    size: int
    mean: dict[str, float | None]
    typical: dict[str, int]
    varying: tuple[str, ...]


class AttributeClusters:
    """Hierarchical clusters of the label vectors, and the mixture read-out over them.

    Args:
        n_clusters: number of footwear clusters; ``None`` picks the smallest number for which
            every cluster varies in at most ``max_varying`` attributes. The not-footwear cluster
            comes on top.
        max_varying: most varying attributes allowed per cluster when ``n_clusters`` is None.
        tol: an attribute whose minority value is at most this share of a cluster is fixed.
        min_observed: judged attributes (of the 13) a pattern needs to enter the tree.
        min_size: share of the footwear rows below which a cluster is dissolved.
        pull: in :meth:`combine`, weight of a cluster's value on its fixed attributes (0 keeps
            the heads' value, 1 replaces it).
        keys: column names; must contain ``not_footwear``.

    Attributes:
        clusters_: list of :class:`Cluster`; footwear clusters by size, not-footwear last.
        mean_: (C, K) per-cluster mean label, NaN where never judged.
        count_: (C, K) judged labels behind ``mean_``.
        size_: (C,) rows per cluster (training rows assigned to it).
        typical_: (C, K) bool, fixed attributes.  varying_: (C, K) bool, varying attributes.
        not_footwear_cluster_: index of the not-footwear cluster, or None without such rows.
        pattern_codes_, pattern_labels_: the training label patterns (base-3 codes, sorted) and
            their clusters, so that :meth:`assign` reproduces ``fit`` on training rows.
    """

    def __init__(self, n_clusters: int | None = None, max_varying: int = 5, tol: float = 0.03,
                 min_observed: int = 7, min_size: float = 0.01, pull: float = 0.9,
                 keys: tuple[str, ...] = OUTPUT_KEYS) -> None:
        self.n_clusters = n_clusters
        self.max_varying = max_varying
        self.tol = tol
        self.min_observed = min_observed
        self.min_size = min_size
        self.pull = pull
        self.keys = keys

    # -- fitting -------------------------------------------------------------------------------

    def _check(self) -> int:
        if NOT_FOOTWEAR.key not in self.keys:
            raise ValueError(f"keys must contain {NOT_FOOTWEAR.key!r}")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ValueError(f"n_clusters must be None or >= 1, got {self.n_clusters}")
        if self.max_varying < 0 or not 0 <= self.min_size < 1:
            raise ValueError(f"max_varying must be >= 0 and min_size in [0, 1), got "
                             f"{self.max_varying} and {self.min_size}")
        if not 0 <= self.tol < 0.5:
            raise ValueError(f"tol must be in [0, 0.5), got {self.tol}")
        if not 0 <= self.pull <= 1:
            raise ValueError(f"pull must be in [0, 1], got {self.pull}")
        if not 1 <= self.min_observed <= len(self.keys) - 1:
            raise ValueError(f"min_observed must be in [1, {len(self.keys) - 1}], got {self.min_observed}")
        return list(self.keys).index(NOT_FOOTWEAR.key)

    def _stats(self, y: np.ndarray, counts: np.ndarray, labels: np.ndarray, c: int) -> None:
        """Per-cluster means, judged counts, fixed and varying masks from weighted patterns."""
        obs = (y != MASK) * counts[:, None]
        onehot = np.eye(c)[labels]  # (P, C)
        self.count_ = onehot.T @ obs
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean_ = (onehot.T @ (obs * (y == 1))) / self.count_
        minority = np.minimum(self.mean_, 1 - self.mean_)
        self.typical_ = (self.count_ > 0) & (minority <= self.tol)
        self.varying_ = (self.count_ > 0) & (minority > self.tol)
        self.size_ = onehot.T @ counts

    def _loglik(self, y: np.ndarray) -> np.ndarray:
        """(N, C) log size + Bernoulli log-likelihood of the judged labels, smoothed to the
        global rate (an attribute never judged in a cluster scores as in the population)."""
        pos_all = np.nansum(self.mean_ * self.count_, 0)
        glob = (pos_all + 0.5) / (self.count_.sum(0) + 1)
        m = (np.nan_to_num(self.mean_) * self.count_ + glob) / (self.count_ + 1)
        obs = y != MASK
        ll = (obs * (y == 1)) @ np.log(m).T + (obs * (y == 0)) @ np.log1p(-m).T
        return np.log(np.maximum(self.size_, 1e-12)) + ll

    def fit(self, y: np.ndarray) -> "AttributeClusters":
        """Cluster training label vectors.

        Args:
            y: (N, K) labels in {0, 0.5, 1}, columns in the order of ``keys``.

        Returns:
            self.

        Raises:
            ValueError: bad parameters or labels, or too few well-judged footwear rows.
        """
        j_nf = self._check()
        y = np.asarray(y, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != len(self.keys) or not np.isin(y, (0, MASK, 1)).all():
            raise ValueError(f"y must be (N, {len(self.keys)}) with values 0, 0.5, 1")
        attrs = np.array([k != j_nf for k in range(y.shape[1])])
        foot = y[y[:, j_nf] != 1]
        pats, counts = np.unique(foot, axis=0, return_counts=True)
        n_obs = (pats[:, attrs] != MASK).sum(1)
        core = np.flatnonzero(n_obs >= self.min_observed)
        core = core[np.argsort(-counts[core], kind="stable")[:_MAX_TREE_PATTERNS]]
        if core.size == 0:
            raise ValueError(f"no footwear label pattern has >= {self.min_observed} judged attributes")
        sub = pats[core][:, attrs]
        z = average_linkage(_disagreement(sub == 1, sub != MASK), counts[core])
        best = None
        for n in range(1, core.size + 1):  # maxclust, then small clusters are dissolved
            labels = self._cut(z, n, pats, counts, core)
            worst = int(self.varying_.sum(1).max())
            if self.n_clusters is not None:
                best = (0, labels)
                if labels.max() + 1 >= self.n_clusters:
                    break
                continue
            if best is None or worst < best[0]:
                best = (worst, labels)
            if worst <= self.max_varying:
                break
        labels = best[1]
        c = labels.max() + 1
        self.not_footwear_cluster_ = None
        if (y[:, j_nf] == 1).any():
            nf_pats, nf_counts = np.unique(y[y[:, j_nf] == 1], axis=0, return_counts=True)
            pats, counts = np.vstack([pats, nf_pats]), np.concatenate([counts, nf_counts])
            labels = np.concatenate([labels, np.full(len(nf_counts), c)])
            self.not_footwear_cluster_, c = int(c), c + 1
        self._stats(pats, counts, labels, c)
        order = np.argsort(_codes(pats))
        self.pattern_codes_, self.pattern_labels_ = _codes(pats)[order], labels[order]
        self._set_clusters()
        return self

    def _cut(self, z: np.ndarray, n: int, pats: np.ndarray, counts: np.ndarray,
             core: np.ndarray) -> np.ndarray:
        """Cut the tree into n clusters, dissolve small ones, assign every pattern; sets stats."""
        tree = np.full(len(pats), -1)
        tree[core] = fcluster(z, n, criterion="maxclust") - 1 if core.size > 1 else 0
        for _ in range(3):  # dissolving a cluster can leave another one too small
            c = tree.max() + 1
            known = tree >= 0
            self._stats(pats[known], counts[known], tree[known], c)
            labels = np.where(known, tree, np.argmax(self._loglik(pats), 1))
            size = np.bincount(labels, weights=counts, minlength=c)
            keep = size >= min(self.min_size * counts.sum(), size.max())
            if keep.all():
                break
            remap = np.cumsum(keep) - 1
            tree = np.where(known & keep[np.maximum(tree, 0)], remap[np.maximum(tree, 0)], -1)
        order = np.argsort(-np.bincount(labels, weights=counts), kind="stable")
        labels = np.argsort(order)[labels]  # largest cluster first
        self._stats(pats, counts, labels, labels.max() + 1)
        return labels

    def _set_clusters(self) -> None:
        names, clusters = [], []
        for c in range(len(self.mean_)):
            mean = self.mean_[c]
            if c == self.not_footwear_cluster_:
                name = _SHORT[NOT_FOOTWEAR.key]
            else:
                on = [k for k in np.argsort(-np.nan_to_num(mean), kind="stable")
                      if mean[k] >= 0.5 and self.keys[k] != NOT_FOOTWEAR.key]
                name = ", ".join(_SHORT.get(self.keys[k], self.keys[k]) for k in on[:3]) or "plain"
                var = [self.keys[k] for k in np.flatnonzero(self.varying_[c]) if mean[k] < 0.5]
                if name in names and var:
                    name += " ±" + _SHORT.get(var[0], var[0])
            name = name if name not in names else f"{name} #{names.count(name) + 1}"
            names.append(name)
            clusters.append(Cluster(
                name=name, size=int(round(self.size_[c])),
                mean={k: None if np.isnan(v) else float(v) for k, v in zip(self.keys, mean)},
                typical={k: int(round(mean[i])) for i, k in enumerate(self.keys) if self.typical_[c, i]},
                varying=tuple(k for i, k in enumerate(self.keys) if self.varying_[c, i])))
        self.clusters_ = clusters

    # -- use -----------------------------------------------------------------------------------

    def assign(self, y: np.ndarray) -> np.ndarray:
        """(N,) cluster index per label row, e.g. targets for the gate.

        A label pattern seen in ``fit`` gets the cluster it was given there. Other rows:
        ``not_footwear = 1`` goes to the not-footwear cluster, the rest to the footwear cluster of
        highest likelihood of their judged attributes (0.5 ignored), so rows with many masks
        land in the largest cluster consistent with what is known.
        """
        y = np.asarray(y, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != len(self.keys):
            raise ValueError(f"y must be (N, {len(self.keys)}), got shape {y.shape}")
        j_nf = list(self.keys).index(NOT_FOOTWEAR.key)
        ll = self._loglik(y)
        if self.not_footwear_cluster_ is not None:
            ll[:, self.not_footwear_cluster_] = -np.inf
        out = np.argmax(ll, axis=1)
        if self.not_footwear_cluster_ is not None:
            out[y[:, j_nf] == 1] = self.not_footwear_cluster_
        codes = _codes(y)
        pos = np.minimum(np.searchsorted(self.pattern_codes_, codes), len(self.pattern_codes_) - 1)
        seen = self.pattern_codes_[pos] == codes
        out[seen] = self.pattern_labels_[pos[seen]]
        return out

    def combine(self, cluster_probs: np.ndarray, attr_probs: np.ndarray) -> np.ndarray:
        """Mixture read-out ``p(a|x) = sum_c p(c|x) p(a|c,x)``.

        ``p(a|c,x)`` is the head's ``p(a|x)`` for attributes varying (or unknown) in c and
        ``(1 - pull) p(a|x) + pull * mean_c(a)`` for attributes fixed in c. The not-footwear
        cluster has ``not_footwear`` fixed at 1, so a gate sure of it forces not_footwear high.

        Args:
            cluster_probs: (C,) or (N, C) gate probabilities (renormalised to sum to 1).
            attr_probs: (K,) or (N, K) head probabilities.

        Returns:
            (K,) or (N, K) probabilities in [0, 1].
        """
        g, a = np.asarray(cluster_probs, np.float64), np.asarray(attr_probs, np.float64)
        single = g.ndim == 1
        g, a = np.atleast_2d(g), np.atleast_2d(a)
        if g.shape[1] != len(self.clusters_) or a.shape[1] != len(self.keys) or len(g) != len(a):
            raise ValueError(f"need cluster_probs (N, {len(self.clusters_)}) and attr_probs "
                             f"(N, {len(self.keys)}), got {g.shape} and {a.shape}")
        if np.any(g < 0) or np.any(g.sum(1) <= 0):
            raise ValueError("cluster_probs must be non-negative with a positive sum per row")
        g = g / g.sum(1, keepdims=True)
        target = np.nan_to_num(self.mean_)[None]  # (1, C, K)
        per = np.where(self.typical_[None], (1 - self.pull) * a[:, None] + self.pull * target,
                       a[:, None])  # (N, C, K)
        out = np.clip(np.einsum("nc,nck->nk", g, per), 0.0, 1.0)
        return out[0] if single else out

    def atypical_firing(self, cluster_probs: np.ndarray, attr_probs: np.ndarray,
                        threshold: float = 0.5) -> list[str]:
        """Attributes fixed at 0 in the most likely cluster whose probability >= ``threshold``."""
        c = int(np.argmax(np.asarray(cluster_probs)))
        fired = np.asarray(attr_probs) >= threshold
        return [k for i, k in enumerate(self.keys)
                if fired[i] and self.typical_[c, i] and self.mean_[c, i] < 0.5]

    def describe(self) -> str:
        """A table of the clusters for humans (one row per cluster)."""
        rows = [f"{'#':>2}  {'cluster':<28} {'size':>6} {'share':>6}  {'fixed 1':<22} varying (mean)"]
        total = max(sum(c.size for c in self.clusters_), 1)
        for i, c in enumerate(self.clusters_):
            ones = ", ".join(k for k, v in c.typical.items() if v == 1) or "-"
            var = ", ".join(f"{k} {c.mean[k]:.2f}" for k in c.varying) or "-"
            rows.append(f"{i:>2}  {c.name:<28} {c.size:>6} {c.size / total:>6.1%}  {ones:<22} {var}")
        return "\n".join(rows)

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-serialisable parameters and learned state."""
        params = {k: getattr(self, k) for k in
                  ("n_clusters", "max_varying", "tol", "min_observed", "min_size", "pull")}
        return {"params": params, "keys": list(self.keys),
                "not_footwear_cluster": self.not_footwear_cluster_,
                "patterns": {"codes": self.pattern_codes_.tolist(),
                             "labels": self.pattern_labels_.tolist()},
                "clusters": [{"name": c.name, "size": c.size, "mean": list(c.mean.values()),
                              "n_judged": [float(v) for v in self.count_[i]],
                              "typical": c.typical, "varying": list(c.varying)}
                             for i, c in enumerate(self.clusters_)]}

    @classmethod
    def from_dict(cls, d: dict) -> "AttributeClusters":
        """Inverse of :meth:`to_dict`."""
        obj = cls(keys=tuple(d["keys"]), **d["params"])
        cl = d["clusters"]
        obj.not_footwear_cluster_ = d["not_footwear_cluster"]
        obj.pattern_codes_ = np.asarray(d["patterns"]["codes"], dtype=np.int64)
        obj.pattern_labels_ = np.asarray(d["patterns"]["labels"], dtype=np.int64)
        obj.mean_ = np.array([[np.nan if v is None else v for v in c["mean"]] for c in cl], float)
        obj.count_ = np.array([c["n_judged"] for c in cl], dtype=np.float64)
        obj.size_ = np.array([c["size"] for c in cl], dtype=np.float64)
        obj.typical_ = np.array([[k in c["typical"] for k in obj.keys] for c in cl], dtype=bool)
        obj.varying_ = np.array([[k in c["varying"] for k in obj.keys] for c in cl], dtype=bool)
        obj.clusters_ = [Cluster(c["name"], int(c["size"]), dict(zip(obj.keys, c["mean"])),
                                 {k: int(v) for k, v in c["typical"].items()}, tuple(c["varying"]))
                         for c in cl]
        return obj
