"""Bayesian fusion of the M photos of one item (seed paper, introduction and section 1).

Each photo m gives calibrated probabilities p_mk (``calibration.py``). Under naive Bayes each photo
adds its evidence ``d_mk = logit p_mk - logit pi_k`` to the prior log-odds (the prior pi_k is
subtracted once per photo because every photo's posterior already contains it). Naive Bayes
treats the photos as independent; the photos of one item are not (same shoe, same light, often
the same angle), so its sum is over-confident. We therefore discount correlated evidence with the
effective number of photos of an equi-correlated sample,

    n_eff(W) = W / (1 + (W - 1) rho_k)   for W >= 1,   n_eff(W) = W   for W < 1,

where W is a (weighted) count of photos and rho_k in [0, 1] a per-attribute correlation fitted on
validation items. n_eff is increasing and concave with n_eff(0) = 0, n_eff(1) = 1.

**Why not simply ``logit pi + n_eff(W) * mean_w(d)``.** That is the same as ``c * sum_m w d`` with
``c = n_eff / W`` and is *not* monotone: with rho = 1 it is the mean log-odds, and adding a photo
that agrees with the verdict but less strongly than the mean lowers the posterior. We instead
aggregate each direction of evidence with the Choquet integral of the capacity
``mu(A) = n_eff(sum_{m in A} w_mk)``:

    logit p_k = logit pi_k + E+_k - E-_k,
    E+_k = sum_i (n_eff(W_(i)) - n_eff(W_(i-1))) * x_(i),   x_m = max(d_mk, 0) sorted decreasing,

with W_(i) the weight of the i strongest photos, and E- the same on ``max(-d_mk, 0)``. The strongest
photo counts fully, each further one by the marginal gain of n_eff. Properties (tested):

- one photo with w = 1 is returned unchanged (``n_eff(1) = 1``); photo order does not matter;
- all weights 0 for k gives the prior pi_k; a weight w < 1 on a lone photo shrinks d to w * d;
- M identical photos give ``logit pi + n_eff(M) d``: the equi-correlated effective count;
  rho = 0 is naive Bayes, rho = 1 keeps only the strongest photo per direction;
- adding a photo with p >= pi_k (evidence for k) never lowers the posterior of k, and one with
  p <= pi_k never raises it: the Choquet integral of a monotone capacity only grows when an
  element with a non-negative value is added, and the other direction is untouched.

Assumptions: the per-photo probabilities are calibrated and were produced by heads trained with
class prior pi (the training prior, see :func:`label_priors`); correlation between photos is the
same for every pair (equi-correlation) and does not depend on the item.

Example:
    >>> fus = BayesianFusion(priors=label_priors(y_train)).fit(val_view_probs, val_item_y)
    >>> fus.fuse(photo_probs)            # (M, 14) -> (14,)
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

from .attributes import MASK

__all__ = ["BayesianFusion", "label_priors", "effective_count"]


def label_priors(y: np.ndarray) -> np.ndarray:
    """Per-column rate of 1 among non-masked labels of ``y`` (N, K); 0.5 where none is known."""
    y = np.asarray(y, dtype=np.float64)
    keep = y != MASK
    n = keep.sum(0)
    pos = np.where(keep, y, 0.0).sum(0)
    return np.where(n > 0, pos / np.maximum(n, 1), 0.5)


def effective_count(w: np.ndarray, rho: np.ndarray | float) -> np.ndarray:
    """n_eff(W): W for W < 1, ``W / (1 + (W - 1) rho)`` for W >= 1 (see the module docstring)."""
    w = np.asarray(w, dtype=np.float64)
    big = np.maximum(w, 1.0)
    return np.where(w < 1.0, w, big / (1.0 + (big - 1.0) * rho))


def _sorted_side(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort one direction's evidence decreasing along the photo axis; cumulative weights."""
    order = np.argsort(-x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)  # (N, M, K)
    cw = np.cumsum(np.take_along_axis(w, order, axis=1), axis=1)
    return xs, cw


def _choquet(xs: np.ndarray, cw: np.ndarray, rho: np.ndarray) -> np.ndarray:
    n = effective_count(cw, rho)  # (N, M, K)
    gain = np.diff(n, axis=1, prepend=0.0)
    return (xs * gain).sum(axis=1)  # (N, K)


class BayesianFusion:
    """Combine the (M, K) per-photo probabilities of an item into K item probabilities.

    Args:
        priors: (K,) training prior pi_k of each output; ``None`` computes it in :meth:`fit` from
            the labels given there (pass the training prior when ``fit`` sees validation data).
        rho: correlation between photos, a float or (K,) in [0, 1]; ``None`` fits it per output.
        eps: per-photo probabilities and priors are clipped to [eps, 1 - eps].

    Attributes:
        priors_: (K,) prior used.
        rho_: (K,) correlation used; outputs without any validation label get 1 (conservative).
    """

    def __init__(self, priors: np.ndarray | None = None, rho: float | np.ndarray | None = None,
                 eps: float = 1e-6) -> None:
        self.priors = priors
        self.rho = rho
        self.eps = eps

    # -- input checking ------------------------------------------------------------------------

    def _prepare(self, view_probs: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """Validate (N, M, K) probabilities and weights; NaN photos get weight 0."""
        p = np.asarray(view_probs, dtype=np.float64)
        if p.ndim != 3:
            raise ValueError(f"view_probs must be (N, M, K), got shape {p.shape}")
        if np.any((p < 0) | (p > 1)):
            raise ValueError("view_probs must lie in [0, 1] (NaN marks a missing photo)")
        if weights is None:
            w = np.ones_like(p)
        else:
            w = np.asarray(weights, dtype=np.float64)
            w = w[:, :, None] if w.shape == p.shape[:2] else w
            if w.shape not in (p.shape, p.shape[:2] + (1,)) or not np.all((w >= 0) & (w <= 1)):
                raise ValueError(f"weights must be (N, M) or (N, M, K) in [0, 1] for view_probs "
                                 f"{p.shape}, got shape {np.shape(weights)}")
            w = np.broadcast_to(w, p.shape).copy()
        missing = np.isnan(p)
        w[missing] = 0.0
        p = np.clip(np.where(missing, 0.5, p), self.eps, 1 - self.eps)
        return p, w

    def _evidence(self, p: np.ndarray, w: np.ndarray, priors: np.ndarray) -> tuple[np.ndarray, ...]:
        d = logit(p) - logit(priors)  # (N, M, K) prior-corrected log-odds
        pos = _sorted_side(np.maximum(d, 0.0), w)
        neg = _sorted_side(np.maximum(-d, 0.0), w)
        return pos, neg

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, view_probs: np.ndarray, y: np.ndarray,
            weights: np.ndarray | None = None) -> "BayesianFusion":
        """Set the priors and fit rho_k by the masked log-loss of the fused output.

        Args:
            view_probs: (N_items, M, K) calibrated per-photo probabilities (NaN = no such photo).
            y: (N_items, K) item labels, 0.5 masked.
            weights: optional (N_items, M) or (N_items, M, K) photo suitability in [0, 1].

        Returns:
            self.

        Raises:
            ValueError: bad shapes or values, or ``eps`` / ``priors`` / ``rho`` out of range.
        """
        if not 0 < self.eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {self.eps}")
        y = np.asarray(y, dtype=np.float64)
        p, w = self._prepare(view_probs, weights)
        n_items, _, k = p.shape
        if y.shape != (n_items, k):
            raise ValueError(f"y must be {(n_items, k)} for view_probs {p.shape}, got {y.shape}")
        priors = label_priors(y) if self.priors is None else np.asarray(self.priors, np.float64)
        if priors.shape != (k,) or np.any((priors <= 0) | (priors >= 1)):
            raise ValueError(f"priors must be ({k},) strictly inside (0, 1), got {priors!r}")
        self.priors_ = np.clip(priors, self.eps, 1 - self.eps)
        if self.rho is not None:
            self.rho_ = self._check_rho(self.rho, k)
            return self
        (xp, cp), (xn, cn) = self._evidence(p, w, self.priors_)
        lp = logit(self.priors_)
        rho = np.ones(k)
        for j in range(k):
            keep = y[:, j] != MASK
            if not keep.any():
                continue
            sl = (keep, slice(None), slice(j, j + 1))
            t = y[keep, j]

            def loss(r: float, sl: tuple = sl, t: np.ndarray = t, j: int = j) -> float:
                z = lp[j] + _choquet(xp[sl], cp[sl], r)[:, 0] - _choquet(xn[sl], cn[sl], r)[:, 0]
                return float(np.mean(np.logaddexp(0.0, z) - t * z))

            rho[j] = minimize_scalar(loss, bounds=(0.0, 1.0), method="bounded",
                                     options={"xatol": 1e-4}).x
        self.rho_ = rho
        return self

    @staticmethod
    def _check_rho(rho: float | np.ndarray, k: int) -> np.ndarray:
        r = np.broadcast_to(np.asarray(rho, dtype=np.float64), (k,)).copy()
        if np.any(np.isnan(r)) or np.any((r < 0) | (r > 1)):
            raise ValueError(f"rho must be a float or ({k},) array in [0, 1], got {rho!r}")
        return r

    # -- prediction ----------------------------------------------------------------------------

    def fuse_items(self, view_probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Fuse a batch of items.

        Args:
            view_probs: (N, M, K) per-photo probabilities; NaN rows pad items with fewer photos.
            weights: optional (N, M) or (N, M, K) suitability of photo m for output k, in [0, 1];
                0 ignores the photo for that output.

        Returns:
            (N, K) item probabilities in [0, 1].
        """
        p, w = self._prepare(view_probs, weights)
        if p.shape[2] != self.priors_.size:
            raise ValueError(f"view_probs have K = {p.shape[2]}, fitted on {self.priors_.size}")
        (xp, cp), (xn, cn) = self._evidence(p, w, self.priors_)
        z = logit(self.priors_) + _choquet(xp, cp, self.rho_) - _choquet(xn, cn, self.rho_)
        out = expit(z)
        # One fully suitable photo is its own answer; return it bit-exactly, not via logit/expit.
        used = w > 0
        lone = (used.sum(axis=1) == 1) & ((w == 1) & used).any(axis=1)  # (N, K)
        own = (p * used).sum(axis=1)
        return np.where(lone, own, out)

    def fuse(self, probs: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Fuse the (M, K) photo matrix of one item into (K,) probabilities.

        Args:
            probs: (M, K) per-photo probabilities.
            weights: optional (M,) or (M, K) suitability in [0, 1].
        """
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2:
            raise ValueError(f"probs must be (M, K), got shape {probs.shape}")
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[None]
        return self.fuse_items(probs[None], w)[0]

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """JSON-serialisable parameters and learned state."""
        return {"eps": self.eps, "priors": [float(v) for v in self.priors_],
                "rho": [float(v) for v in self.rho_]}

    @classmethod
    def from_dict(cls, d: dict) -> "BayesianFusion":
        """Inverse of :meth:`to_dict`; also builds a fusion from known priors and rho."""
        obj = cls(priors=np.asarray(d["priors"], np.float64), rho=d["rho"], eps=float(d["eps"]))
        obj.priors_ = np.clip(obj.priors, obj.eps, 1 - obj.eps)
        obj.rho_ = cls._check_rho(d["rho"], obj.priors_.size)
        return obj
