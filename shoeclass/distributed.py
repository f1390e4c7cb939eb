"""torch.distributed for shoeclass: one process per CPU socket or GPU, launched by ``torchrun``.

``torchrun --standalone --nproc-per-node=N $(which shoeclass) …`` (or the multi-node form, see the
README) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each
process. :func:`setup` joins the process group from them: gloo on CPUs, NCCL on GPUs (one GPU per
process, ``cuda:LOCAL_RANK``). Without those variables everything here is a no-op on one process
(rank 0 of 1), so the same code runs unchanged from a plain ``shoeclass`` command.

The work is split by striding: rank ``r`` of ``N`` takes items ``r, r+N, r+2N, …`` (:func:`shard`),
so the shards differ by at most one item and are merged back into input order with :func:`unshard`.
"""
from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from .runtime import default_device

__all__ = ["setup", "cleanup", "is_distributed", "rank", "world_size", "is_main", "barrier", "device",
           "shard", "unshard", "all_sum", "gather_rows", "launched"]

logger = logging.getLogger(__name__)

TIMEOUT = datetime.timedelta(hours=6)  # a barrier waits for the slowest rank's whole shard


def launched() -> bool:
    """True in a process started by torchrun with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes (no-op without torchrun); returns (rank, world size).

    Args:
        backend: ``"gloo"`` or ``"nccl"``; None picks NCCL when CUDA is present, else gloo.
    """
    if is_distributed() or not launched():
        return rank(), world_size()
    cuda = default_device().type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend or ("nccl" if cuda else "gloo"), timeout=TIMEOUT)
    logger.info("rank %d of %d joined (%s)", rank(), world_size(), dist.get_backend())
    return rank(), world_size()


def cleanup() -> None:
    """Leave the process group (after a last barrier, so no rank exits while others still talk)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes model folders, merged outputs and logs."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU."""
    if default_device().type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over all ranks (``x`` itself on one process), on ``x``'s device."""
    if not is_distributed():
        return x
    y = x.to(device(), copy=True)  # NCCL reduces GPU tensors only
    dist.all_reduce(y)
    return y.to(x.device)


def gather_rows(part: np.ndarray, total: int) -> np.ndarray:
    """The inverse of :func:`shard` for arrays, on every rank: ``part`` holds this rank's rows
    ``r, r+N, …`` of ``total``; returns all ``total`` rows in input order (``part`` on one process).
    For float arrays (float16 travels as float32).

    Each rank fills its rows of a zero array and the arrays are summed: adding zeros is exact, so
    the result is bit for bit the rows each rank computed."""
    if not is_distributed():
        return part
    full = np.zeros((total, *part.shape[1:]), np.float64 if part.dtype == np.float64 else np.float32)
    full[rank()::world_size()] = part
    return all_sum(torch.from_numpy(full)).numpy().astype(part.dtype, copy=False)


def shard(items: Sequence, r: int | None = None, n: int | None = None) -> list:
    """Rank ``r``'s items of ``n`` ranks: ``items[r::n]`` (defaults: this process's rank and world)."""
    r = rank() if r is None else r
    n = world_size() if n is None else n
    return list(items[r::n])


def unshard(parts: Sequence[Sequence]) -> list:
    """The inverse of :func:`shard`: ``parts[r]`` holds items ``r, r+N, …``; returns them in order."""
    n = len(parts)
    total = sum(len(p) for p in parts)
    return [parts[i % n][i // n] for i in range(total)]
