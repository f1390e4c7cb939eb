"""Masked losses: a 0.5 label contributes nothing to the loss and nothing to the gradient."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .attributes import MASK

__all__ = ["class_weights", "masked_bce"]


def class_weights(y: np.ndarray, power: float = 1.0, max_weight: float | None = None) -> np.ndarray:
    """(2, K) weights for negatives and positives that equalise the two classes of each output.

    ``power`` = 1 weights both classes equally (what balanced accuracy rewards); 0 leaves the data's
    own frequencies; values between soften the reweighting. ``max_weight`` caps every weight.
    """
    known = y != MASK
    n_pos = ((y == 1) & known).sum(0).astype(np.float64)
    n_neg = ((y == 0) & known).sum(0).astype(np.float64)
    n = np.maximum(n_pos + n_neg, 1)
    w_pos = (n / np.maximum(2 * n_pos, 1)) ** power
    w_neg = (n / np.maximum(2 * n_neg, 1)) ** power
    w = np.stack([w_neg, w_pos])
    return (w if max_weight is None else np.minimum(w, max_weight)).astype(np.float32)


def masked_bce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None,
               sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over the labels that are 0 or 1.

    Args:
        logits: (B, K) binary logits.
        y: (B, K) labels; 0.5 entries are masked out.
        weights: optional (2, K) weights for negatives / positives (see :func:`class_weights`).
        sample_weights: optional (B,) weight per photo (e.g. more weight for rare sources).
    """
    known = y != MASK  # (B, K)
    target = torch.where(known, y, torch.zeros_like(y))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, K)
    if weights is not None:
        loss = loss * torch.where(target > 0.5, weights[1], weights[0])
    if sample_weights is not None:
        loss = loss * sample_weights[:, None]
    loss = torch.where(known, loss, torch.zeros_like(loss))  # zero value and zero gradient
    return loss.sum() / known.sum().clamp(min=1)
