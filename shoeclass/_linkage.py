"""Helpers of ``hierarchy.py``: count-weighted average linkage (scipy's ``linkage`` takes no
multiplicities) and the mask-aware distance between label patterns."""
from __future__ import annotations

import numpy as np

__all__ = ["average_linkage"]


def average_linkage(dist: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Count-weighted UPGMA of P points; returns a scipy linkage matrix (P - 1, 4).

    Args:
        dist: (P, P) symmetric dissimilarities.
        weights: (P,) positive multiplicities (point p stands for ``weights[p]`` identical rows).
    """
    n = len(weights)
    d = np.array(dist, dtype=np.float64)
    np.fill_diagonal(d, np.inf)
    size = np.asarray(weights, dtype=np.float64).copy()
    count, ids = np.ones(n), np.arange(n)
    z = np.zeros((max(n - 1, 0), 4))
    for step in range(n - 1):
        i, j = sorted(divmod(int(np.argmin(d)), n))
        z[step] = min(ids[i], ids[j]), max(ids[i], ids[j]), d[i, j], count[i] + count[j]
        new = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])  # Lance-Williams, average
        d[i, :], d[:, i] = new, new
        d[i, i] = np.inf
        d[j, :], d[:, j] = np.inf, np.inf
        size[i] += size[j]
        count[i] += count[j]
        ids[i] = n + step
    return z


def _codes(y: np.ndarray) -> np.ndarray:
    """One int64 per label row (base 3 on 0 / 0.5 / 1), to look up known patterns."""
    return (np.rint(2 * np.asarray(y)).astype(np.int64) * 3 ** np.arange(y.shape[1])).sum(1)


def _disagreement(y: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Share of co-judged attributes on which two binary patterns differ; 0.5 if none shared."""
    pos, neg = y * obs, (1 - y) * obs
    shared = obs @ obs.T
    return np.where(shared > 0, (pos @ neg.T + neg @ pos.T) / np.maximum(shared, 1), 0.5)
