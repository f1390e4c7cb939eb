"""CPU execution settings: bf16 where the processor has native support, threads, channels_last."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["cpu_has_bf16", "autocast", "configure_threads", "prepare_for_inference", "default_device", "batched",
           "collect"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 pays off."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_device() -> torch.device:
    """CUDA when a GPU is present, else the CPU: training and batch work use it unchanged."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(bf16: bool | None = None, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device``: on the CPU when ``bf16`` is True, or when None and the CPU
    supports it; on CUDA unless ``bf16`` is False."""
    kind = torch.device(device).type
    enabled = (cpu_has_bf16() if kind == "cpu" else True) if bf16 is None else bf16
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=enabled)


def configure_threads(n: int | None = None) -> int:
    """Use all physical cores for intra-op work unless the user set OMP_NUM_THREADS."""
    if n is None and "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def prepare_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, no gradients, channels_last weights (faster convolutions on the CPU)."""
    model.eval().requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


def collect(out: dict[str, np.ndarray], rows: np.ndarray | slice, n: int, batch: dict[str, np.ndarray]) -> None:
    """Write one batch's outputs (dict of (b, ...) arrays) into ``rows`` of ``out``'s (n, ...)
    arrays, creating each with the dtype the batch has."""
    for k, v in batch.items():
        out.setdefault(k, np.empty((n, *v.shape[1:]), v.dtype))[rows] = v


def batched(fn: Callable[[Any], dict[str, np.ndarray]], x: Sequence | np.ndarray | torch.Tensor,
            batch_size: int, *, progress: bool = False, desc: str = "predict") -> dict[str, np.ndarray]:
    """The one batched predict loop over data in memory: every output of ``fn`` (a batch of ``x``
    -> dict of (b, ...) arrays) over consecutive batches, as (N, ...) arrays, under inference mode.
    Photo files go through ``data.table_outputs``, which fills its outputs the same way."""
    from tqdm.auto import tqdm  # a progress bar only where asked for (keeps `import shoeclass` light)

    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress):
            collect(out, slice(i, min(i + batch_size, len(x))), len(x), fn(x[i:i + batch_size]))
    return out
