"""Temperature scaling of the heads' logits, fitted on validation data.

Guo et al. 2017, "On Calibration of Modern Neural Networks": one scalar T divides the logits,
``p = sigmoid(z / T)``; T is chosen to minimise the negative log-likelihood on held-out data. It
changes confidence, never the ranking or the 0.5 decision. Calibrated per-photo probabilities are
what the Bayesian fusion of several photos (``fusion.py``) needs: it adds log-odds, so an
over-confident head would be counted several times over.

- :class:`TemperatureScaling`: one temperature per binary output (the 13 attributes and
  ``not_footwear``); 0.5 labels are masks and skipped.
- :class:`SoftmaxTemperature`: one temperature for a softmax over C classes (the cluster gate).

Example:
    >>> ts = TemperatureScaling().fit(val_logits, val_y)      # (N, 14), (N, 14)
    >>> probs = ts.transform(test_logits)                     # (N, 14) in [0, 1]
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax

from .attributes import MASK

__all__ = ["TemperatureScaling", "SoftmaxTemperature"]


def _check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(b) for b in bounds)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"log_t_bounds must be two finite numbers lo < hi, got {bounds!r}")
    return lo, hi


def _fit_log_t(nll, bounds: tuple[float, float]) -> float:
    """Minimise a scalar NLL over log T in ``bounds`` (bounded Brent)."""
    res = minimize_scalar(nll, bounds=bounds, method="bounded", options={"xatol": 1e-5})
    return float(res.x)


class TemperatureScaling:
    """Per-output temperature for K independent sigmoid heads.

    Args:
        log_t_bounds: search interval for log T; the default allows T in [e^-3, e^3].
        min_per_class: a column with fewer than this many positive or negative (non-masked)
            labels keeps T = 1, since its NLL optimum would be degenerate.

    Attributes:
        temperature_: (K,) fitted temperatures, > 0.
    """

    def __init__(self, log_t_bounds: tuple[float, float] = (-3.0, 3.0), min_per_class: int = 1) -> None:
        self.log_t_bounds = log_t_bounds
        self.min_per_class = min_per_class

    def fit(self, logits: np.ndarray, y: np.ndarray) -> "TemperatureScaling":
        """Fit one temperature per column on validation logits.

        Args:
            logits: (N, K) raw head outputs (before the sigmoid).
            y: (N, K) labels, 1 / 0, with 0.5 as a mask.

        Returns:
            self.

        Raises:
            ValueError: shapes differ, or a parameter is out of range.
        """
        bounds = _check_bounds(self.log_t_bounds)
        if self.min_per_class < 1:
            raise ValueError(f"min_per_class must be >= 1, got {self.min_per_class}")
        z, y = np.asarray(logits, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if z.ndim != 2 or z.shape != y.shape:
            raise ValueError(f"logits and y must both be (N, K), got {z.shape} and {y.shape}")
        temps = np.ones(z.shape[1])
        for k in range(z.shape[1]):
            keep = (y[:, k] != MASK) & np.isfinite(z[:, k])
            zk, yk = z[keep, k], y[keep, k]
            n_pos = int((yk == 1).sum())
            if min(n_pos, yk.size - n_pos) < self.min_per_class:
                continue

            def nll(log_t: float, zk: np.ndarray = zk, yk: np.ndarray = yk) -> float:
                s = zk * np.exp(-log_t)
                return float(np.mean(np.logaddexp(0.0, s) - yk * s))

            temps[k] = np.exp(_fit_log_t(nll, bounds))
        self.temperature_ = temps
        return self

    def transform_logits(self, logits: np.ndarray) -> np.ndarray:
        """Scaled logits ``z / T``, same shape as ``logits`` (..., K)."""
        z = np.asarray(logits, dtype=np.float64)
        if z.shape[-1] != self.temperature_.size:
            raise ValueError(f"logits have {z.shape[-1]} columns, the model was fitted on "
                             f"{self.temperature_.size}")
        return z / self.temperature_

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``sigmoid(z / T)``, (..., K)."""
        return expit(self.transform_logits(logits))

    def to_dict(self) -> dict:
        """JSON-serialisable parameters and learned state."""
        return {"log_t_bounds": list(self.log_t_bounds), "min_per_class": self.min_per_class,
                "temperature": [float(t) for t in self.temperature_]}

    @classmethod
    def from_dict(cls, d: dict) -> "TemperatureScaling":
        """Inverse of :meth:`to_dict`."""
        obj = cls(log_t_bounds=tuple(d["log_t_bounds"]), min_per_class=int(d["min_per_class"]))
        obj.temperature_ = np.asarray(d["temperature"], dtype=np.float64)
        return obj


class SoftmaxTemperature:
    """One temperature for a C-way softmax (e.g. the cluster gate of ``hierarchy.py``).

    Args:
        log_t_bounds: search interval for log T.

    Attributes:
        temperature_: the fitted scalar T > 0.
    """

    def __init__(self, log_t_bounds: tuple[float, float] = (-3.0, 3.0)) -> None:
        self.log_t_bounds = log_t_bounds

    def fit(self, logits: np.ndarray, targets: np.ndarray) -> "SoftmaxTemperature":
        """Fit T on validation logits.

        Args:
            logits: (N, C) raw gate outputs.
            targets: (N,) integer classes in [0, C); negative targets are ignored.

        Returns:
            self.

        Raises:
            ValueError: shapes disagree or a target is >= C.
        """
        bounds = _check_bounds(self.log_t_bounds)
        z = np.asarray(logits, dtype=np.float64)
        t = np.asarray(targets)
        if z.ndim != 2 or t.shape != (z.shape[0],):
            raise ValueError(f"logits must be (N, C) and targets (N,), got {z.shape} and {t.shape}")
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"targets must be integers, got dtype {t.dtype}")
        if t.size and t.max() >= z.shape[1]:
            raise ValueError(f"targets must be < C = {z.shape[1]}, got {t.max()}")
        keep = t >= 0
        z, t = z[keep], t[keep]
        if t.size == 0:
            self.temperature_ = 1.0
            return self

        def nll(log_t: float) -> float:
            lp = log_softmax(z * np.exp(-log_t), axis=1)
            return float(-lp[np.arange(t.size), t].mean())

        self.temperature_ = float(np.exp(_fit_log_t(nll, bounds)))
        return self

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities ``softmax(z / T)`` over the last axis."""
        return softmax(np.asarray(logits, dtype=np.float64) / self.temperature_, axis=-1)

    def to_dict(self) -> dict:
        """JSON-serialisable parameters and learned state."""
        return {"log_t_bounds": list(self.log_t_bounds), "temperature": float(self.temperature_)}

    @classmethod
    def from_dict(cls, d: dict) -> "SoftmaxTemperature":
        """Inverse of :meth:`to_dict`."""
        obj = cls(log_t_bounds=tuple(d["log_t_bounds"]))
        obj.temperature_ = float(d["temperature"])
        return obj
