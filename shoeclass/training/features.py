"""Cached trunk features: a frozen trunk runs once per photo and view, then heads train in seconds.

The cache key covers everything that changes the features: backbone, the trunk weights' checksum,
the preprocessing (including the augmentation seed of an augmented view) and the photo list, so a
cache is reused across runs and configs and never silently reused for something else.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..data import EvalPreset, table_outputs
from ..labels import LabelTable
from ..models import Trunk, state_checksum
from ..runtime import autocast, cpu_has_bf16, prepare_for_inference

__all__ = ["cache_key", "trunk_features", "feature_cache_path"]

logger = logging.getLogger(__name__)


def cache_key(trunk_sha: str, preprocess: dict, table: LabelTable, bf16: bool) -> str:
    photos = hashlib.sha256("\n".join(map(str, table.image)).encode()).hexdigest()
    blob = json.dumps({"trunk": trunk_sha, "pre": preprocess, "photos": photos, "bf16": bf16}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def trunk_features(trunk: Trunk, table: LabelTable, preset: EvalPreset, cache_dir: str | Path,
                   *, view: str = "eval", trunk_sha: str | None = None, bf16: bool | None = None,
                   batch_size: int = 64, num_workers: int = 1, progress: bool = True) -> np.ndarray:
    """(N, D) float32 trunk features of every photo in ``table``, from the cache when present.

    Args:
        trunk: the frozen trunk.
        table: the photos.
        preset: the preprocessing (an augmenting preset makes an augmented view).
        cache_dir: where ``<backbone>-<view>-<key>.npy`` files live (see :func:`feature_cache_path`).
        view: a name for the view that enters the key (e.g. ``"eval"``, ``"aug1"``).
        bf16: autocast to bf16 (None: when the CPU supports it).
    """
    path = feature_cache_path(trunk, table, preset, cache_dir, view=view, trunk_sha=trunk_sha, bf16=bf16)
    return _cached(path, trunk, table, preset, bf16=bf16, batch_size=batch_size, num_workers=num_workers,
                   progress=progress).astype(np.float32)


def feature_cache_path(trunk: Trunk, table: LabelTable, preset: EvalPreset, cache_dir: str | Path,
                       *, view: str = "eval", trunk_sha: str | None = None, bf16: bool | None = None) -> Path:
    """The file :func:`trunk_features` reads and writes for this trunk, photo list and view."""
    pre = {"preset": type(preset).__name__, "backbone": preset.backbone, "view": view, "pooling": trunk.pooling}
    bf16 = cpu_has_bf16() if bf16 is None else bf16
    key = cache_key(trunk_sha or state_checksum(trunk), pre, table, bf16)
    return Path(cache_dir) / f"{trunk.backbone}-{view}-{key}.npy"


def _cached(path: Path, trunk: Trunk, table: LabelTable, preset: EvalPreset, *, bf16: bool | None,
            batch_size: int, num_workers: int, progress: bool) -> np.ndarray:
    """The trunk's features of every photo as float16, from ``path`` when computed before.

    Under torchrun rank r of N computes rows r, r+N, … into ``<path>.part<r>of<N>.npy`` (kept, so a
    rerun after a killed rank redoes only the missing shards), rank 0 merges them into ``path``.
    """
    if path.is_file():
        logger.info("trunk features from cache %s", path)
        return np.load(path)
    r, n = distributed.rank(), distributed.world_size()
    part = path.with_name(f"{path.stem}.part{r}of{n}.npy") if n > 1 else path
    if part.is_file():
        logger.info("trunk features of shard %d/%d from %s", r, n, part)
    else:
        _save(part, _compute(trunk, table.subset(np.arange(r, len(table), n)), preset, bf16=bf16,
                             batch_size=batch_size, num_workers=num_workers, progress=progress and r == 0,
                             desc=path.stem.rsplit("-", 1)[0]))
    if n == 1:
        return np.load(path)
    distributed.barrier()
    if distributed.is_main():
        parts = [path.with_name(f"{path.stem}.part{i}of{n}.npy") for i in range(n)]
        shards = [np.load(p) for p in parts]
        out = np.empty((len(table), trunk.dim), np.float16)
        for i, shard in enumerate(shards):
            out[i::n] = shard
        _save(path, out)
        for p in parts:
            p.unlink()
    distributed.barrier()
    return np.load(path)


def _compute(trunk: Trunk, table: LabelTable, preset: EvalPreset, *, bf16: bool | None, batch_size: int,
             num_workers: int, progress: bool, desc: str) -> np.ndarray:
    """(N, D) float16 features, on this process's device (CUDA when present, bf16 autocast)."""
    prepare_for_inference(trunk)
    dev, home = distributed.device(), next(trunk.parameters()).device
    trunk.to(dev)
    use_bf16 = (cpu_has_bf16() if dev.type == "cpu" else True) if bf16 is None else bf16

    def run(x: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode(), autocast(use_bf16, dev):
            x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
            z = trunk(x).float().cpu().numpy()  # (B, D)
        return {"features": z.astype(np.float16)}

    try:
        return table_outputs(run, table, preset, batch_size, num_workers, progress,
                             desc=desc).get("features", np.empty((0, trunk.dim), np.float16))
    finally:
        trunk.to(home)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)
