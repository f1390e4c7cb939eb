"""Calibration of the attribute probabilities the tariff rules read, fitted on validation photos.

Private helper of :mod:`shoeclass.tariff`. The rules multiply the fused attribute probabilities
of an item as if each were the chance that the attribute is there, so a head that says 0.6 where
the attribute is present 3 % of the time (``sports`` on the shipped model's validation photos)
sends the item to review for a code that was never in doubt, and one that says 0.999 where it is
right 72 % of the time lets a wrong code through. An :class:`InputCalibration` maps each fused
probability through a Platt map ``p' = sigmoid(a * logit(p) + b)`` fitted on the by-eye
validation photos of one model (never on test):

* an output with fewer than ``min_per_class`` positive or negative validation labels keeps its
  probability (a rare attribute the model is unsure of stays uncertain and is asked about; it is
  not calibrated away on a handful of examples);
* the four height heads share one map, so heads that are equal (a photo that cannot show the
  height) stay equal and the ordered read-out keeps its 50/50.

It belongs to one model (``model_sha256``) and carries the review threshold read on the same
validation photos with it applied (``review_below``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy.optimize import minimize

from .attributes import HEIGHT_KEYS, MASK, OUTPUT_KEYS

__all__ = ["InputCalibration", "fit_input_calibration"]

_EPS = 1e-6
FORMAT = "shoeclass-tariff-inputs/1"


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising the NLL of ``sigmoid(a z + b)`` on labels ``y`` in {0, 1}."""
    def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = w[0] * z + w[1]
        # log(1 + e^s) - y s, stable
        loss = np.logaddexp(0.0, s) - y * s
        g = 1.0 / (1.0 + np.exp(-s)) - y
        return float(loss.sum()), np.array([float((g * z).sum()), float(g.sum())])

    res = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B",
                   bounds=[(0.05, 20.0), (-30.0, 30.0)])
    return float(res.x[0]), float(res.x[1])


@dataclass(frozen=True)
class InputCalibration:
    """Per-output Platt maps applied to fused probabilities before the tariff rules read them.

    Attributes:
        model_sha256: the model (``model.json`` ``sha256``) whose outputs it was fitted on.
        maps: output key -> (a, b); outputs not listed keep their probability.
        review_below: the review threshold read on the validation photos with the maps applied.
        fitted_on: what it was fitted on, in words (split, photo count).
    """

    model_sha256: str
    maps: Mapping[str, tuple[float, float]]
    review_below: float
    fitted_on: str = ""
    counts: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = sorted(set(self.maps) - set(OUTPUT_KEYS))
        if bad:
            raise ValueError(f"input calibration: unknown outputs {bad}; outputs: {list(OUTPUT_KEYS)}")
        for key, (a, b) in self.maps.items():
            if not (math.isfinite(a) and math.isfinite(b) and a > 0):
                raise ValueError(f"input calibration: map of {key} needs a finite slope > 0 and a finite "
                                 f"offset, got ({a}, {b})")
        if not 0.0 <= self.review_below <= 1.0:
            raise ValueError(f"input calibration: review_below must lie in [0, 1], got {self.review_below}")

    def apply(self, probs: Mapping[str, float]) -> dict[str, float]:
        """The probabilities with each mapped output recalibrated (others unchanged)."""
        out = dict(probs)
        for key, (a, b) in self.maps.items():
            out[key] = float(1.0 / (1.0 + math.exp(-(a * float(_logit(probs[key])) + b))))
        return out

    def apply_array(self, probs: np.ndarray) -> np.ndarray:
        """(N, 14) probabilities in ``OUTPUT_KEYS`` order, recalibrated."""
        out = np.array(probs, dtype=np.float64, copy=True)
        for key, (a, b) in self.maps.items():
            j = OUTPUT_KEYS.index(key)
            out[:, j] = 1.0 / (1.0 + np.exp(-(a * _logit(out[:, j]) + b)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "model_sha256": self.model_sha256, "fitted_on": self.fitted_on,
                "review_below": self.review_below,
                "maps": {k: [round(a, 6), round(b, 6)] for k, (a, b) in self.maps.items()},
                "counts": {k: list(v) for k, v in self.counts.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InputCalibration":
        if d.get("format") != FORMAT:
            raise ValueError(f"input calibration: format must be {FORMAT!r}, got {d.get('format')!r}")
        unknown = sorted(set(d) - {"format", "model_sha256", "fitted_on", "review_below", "maps", "counts"})
        if unknown:
            raise ValueError(f"input calibration: unknown keys {unknown}")
        return cls(str(d["model_sha256"]), {k: (float(v[0]), float(v[1])) for k, v in d["maps"].items()},
                   float(d["review_below"]), str(d.get("fitted_on", "")),
                   {k: (int(v[0]), int(v[1])) for k, v in d.get("counts", {}).items()})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "InputCalibration":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def fit_input_calibration(probs: np.ndarray, y: np.ndarray, *, model_sha256: str, review_below: float,
                          min_per_class: int = 10, fitted_on: str = "") -> InputCalibration:
    """Fits the maps on (N, 14) fused probabilities and by-eye labels (0.5 = mask, skipped).

    Args:
        probs, y: validation outputs and labels in ``OUTPUT_KEYS`` order.
        model_sha256: the model the outputs come from.
        review_below: the threshold to record (read on the same photos, with the maps applied).
        min_per_class: an output (or the pooled height heads) with fewer positive or negative
            labels keeps its probability.
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if probs.shape != y.shape or probs.ndim != 2 or probs.shape[1] != len(OUTPUT_KEYS):
        raise ValueError(f"probs and y must both be (N, {len(OUTPUT_KEYS)}), got {probs.shape} and {y.shape}")
    groups = [(k,) for k in OUTPUT_KEYS if k not in HEIGHT_KEYS] + [tuple(HEIGHT_KEYS)]
    maps: dict[str, tuple[float, float]] = {}
    counts: dict[str, tuple[int, int]] = {}
    for group in groups:
        cols = [OUTPUT_KEYS.index(k) for k in group]
        z = np.concatenate([_logit(probs[y[:, j] != MASK, j]) for j in cols])
        t = np.concatenate([y[y[:, j] != MASK, j] for j in cols])
        pos, neg = int((t == 1).sum()), int((t == 0).sum())
        for k in group:
            counts[k] = (pos, neg)
        if pos < min_per_class or neg < min_per_class:
            continue
        ab = _platt(z, t)
        for k in group:
            maps[k] = ab
    return InputCalibration(model_sha256, maps, float(review_below), fitted_on, counts)
