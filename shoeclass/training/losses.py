"""Masked losses: a 0.5 label contributes nothing to the loss and nothing to the gradient."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attributes import MASK

__all__ = ["masked_bce"]


def masked_bce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None,
               sample_weights: torch.Tensor | None = None, denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy over the labels that are 0 or 1.

    Args:
        logits: (B, K) binary logits.
        y: (B, K) labels; 0.5 entries are masked out.
        weights: optional (2, K) weights for negatives / positives (see ``labels.class_weights``).
        sample_weights: optional (B,) weight per photo (e.g. more weight for rare sources).
        denominator: what the summed loss is divided by (default: the known labels of this
            batch; distributed training passes the global batch's count per rank).
    """
    known = y != MASK  # (B, K)
    target = torch.where(known, y, torch.zeros_like(y))
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, K)
    if weights is not None:
        loss = loss * torch.where(target > 0.5, weights[1], weights[0])
    if sample_weights is not None:
        loss = loss * sample_weights[:, None]
    loss = torch.where(known, loss, torch.zeros_like(loss))  # zero value and zero gradient
    return loss.sum() / (known.sum().clamp(min=1) if denominator is None else denominator)
