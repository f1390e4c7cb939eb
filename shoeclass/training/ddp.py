"""Training on photos under torchrun: the nets that train on pixels (lenet, a fine-tuned trunk tail).

One process's training, split across ranks so that it stays that training:

- every rank draws the same epoch order and the same augmentation parameters from one generator
  seeded alike (:func:`global_batches`, ``augment.draw_views``), then takes rows ``r, r+N, …`` of
  each global batch (:func:`mine`): the ranks together see exactly one process's batches and views;
- each rank divides its summed loss by the global batch's count of known labels over N, so the
  mean over the ranks, whose gradient ``DistributedDataParallel`` takes, is one process's loss on
  the whole global batch;
- lenet's batch norm normalises with the statistics of the whole global batch
  (:class:`GlobalBatchNorm2d`, as ``nn.SyncBatchNorm``, which needs a GPU);
- validation is sharded the same way and gathered (``distributed.gather_rows``), so every rank
  keeps the same best epoch.

What still differs from one process: dropout masks (each rank draws its own), and float32 sums
taken in another order (each rank sums half the batch, then DDP adds the halves).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import distributed

__all__ = ["global_batches", "mine", "wrap", "seed_dropout", "GlobalBatchNorm2d", "global_batchnorm",
           "local_batchnorm"]


def mine() -> slice:
    """This rank's rows of a global batch (or of any list sharded by ``distributed.shard``)."""
    return slice(distributed.rank(), None, distributed.world_size())


def global_batches(order: torch.Tensor, batch_size: int) -> list[np.ndarray]:
    """One epoch's global batches of row indices, each sorted (memory-mapped caches read faster
    in order). A last batch with fewer rows than ranks joins the batch before, so that no rank
    gets an empty batch (never on one process: its batches are those of ``order.split``).

    Raises:
        ValueError: fewer rows than ranks.
    """
    n = distributed.world_size()
    if len(order) < n:
        raise ValueError(f"{len(order)} training photos cannot be shared by {n} processes")
    batches = [np.sort(b.numpy()) for b in order.split(batch_size)]
    if len(batches[-1]) < n:
        last = batches.pop()
        batches[-1] = np.sort(np.concatenate([batches[-1], last]))
    return batches


def wrap(module: nn.Module) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` under torchrun (``module`` itself on one process)."""
    if not distributed.is_distributed():
        return module
    dev = next(module.parameters()).device
    return nn.parallel.DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)


def seed_dropout(seed: int) -> None:
    """Under torchrun, give every rank but 0 its own dropout masks (rank 0 keeps the stream one
    process has); the ranks would otherwise drop the same units of their k-th rows."""
    if distributed.rank():
        torch.manual_seed(seed + distributed.rank())


class _AllSum(torch.autograd.Function):
    """``x`` summed over the ranks, with the gradient of that sum: each rank's gradient summed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return distributed.all_sum(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return distributed.all_sum(grad.contiguous())


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics are those of the whole global batch (all ranks).

    The same parameters, buffers and state dict as ``nn.BatchNorm2d``; eval mode, and training on
    one process, are plain batch norm. Gradients flow through the summed statistics, as in
    ``nn.SyncBatchNorm``. The sums are accumulated in float64, as the CPU batch norm does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.is_distributed()):
            return super().forward(x)
        dims, dt = (0, 2, 3), torch.float64
        count = distributed.all_sum(torch.tensor(float(x.numel() // x.shape[1]), dtype=dt, device=x.device))
        mean = _AllSum.apply(x.sum(dims, dtype=dt)) / count  # (C,)
        var = (_AllSum.apply((x * x).sum(dims, dtype=dt)) / count - mean * mean).clamp(min=0)  # biased, as normalised
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.to(x.dtype), m)
            self.running_var.lerp_((var * count / (count - 1).clamp(min=1)).to(x.dtype), m)  # unbiased, as kept
        scale = self.weight / torch.sqrt(var + self.eps).to(x.dtype)  # (C,)
        shift = self.bias - mean.to(x.dtype) * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def global_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with its ``BatchNorm2d`` layers made :class:`GlobalBatchNorm2d`, in place.

    The class of each layer is changed rather than the layer replaced: the parameters the
    optimiser holds and the state dict stay the same objects."""
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = GlobalBatchNorm2d
    return model


def local_batchnorm(model: nn.Module) -> nn.Module:
    """The inverse of :func:`global_batchnorm`: plain ``BatchNorm2d`` layers again, in place."""
    for m in model.modules():
        if type(m) is GlobalBatchNorm2d:
            m.__class__ = nn.BatchNorm2d
    return model
