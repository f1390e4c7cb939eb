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
from tqdm.auto import tqdm

from .data import EvalPreset, PhotoDataset
from .labels import LabelTable
from .models import Trunk
from .runtime import autocast, cpu_has_bf16, prepare_for_inference

__all__ = ["state_checksum", "cache_key", "trunk_features", "stem_maps"]

logger = logging.getLogger(__name__)


def state_checksum(module: torch.nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names and values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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
        cache_dir: where ``<backbone>-<view>-<key>.npy`` files live.
        view: a name for the view that enters the key (e.g. ``"eval"``, ``"aug1"``).
        bf16: autocast to bf16 (None: when the CPU supports it).
    """
    pre = {"preset": type(preset).__name__, "backbone": preset.backbone, "view": view, "pooling": trunk.pooling}
    return _cached(trunk, trunk, (trunk.dim,), pre, table, preset, cache_dir, trunk_sha=trunk_sha, bf16=bf16,
                   batch_size=batch_size, num_workers=num_workers, progress=progress).astype(np.float32)


def stem_maps(trunk: Trunk, table: LabelTable, preset: EvalPreset, cache_dir: str | Path,
              *, view: str = "eval", trunk_sha: str | None = None, bf16: bool | None = None,
              batch_size: int = 64, num_workers: int = 1, progress: bool = True) -> np.ndarray:
    """(N, C, H, W) float16 maps of the trunk's frozen stem (EfficientNet-Lite with tuned blocks),
    cached like :func:`trunk_features`; the tunable tail trains and runs on them."""
    with torch.inference_mode():
        shape = tuple(trunk.eval().stem(torch.zeros(1, 3, 224, 224)).shape[1:])  # eval: BN stats untouched
    pre = {"preset": type(preset).__name__, "backbone": preset.backbone, "view": view, "stem_cut": trunk.cut}
    return _cached(trunk, trunk.stem, shape, pre, table, preset, cache_dir, trunk_sha=trunk_sha, bf16=bf16,
                   batch_size=batch_size, num_workers=num_workers, progress=progress, name="stem")


def _cached(trunk: Trunk, fn, shape: tuple, pre: dict, table: LabelTable, preset: EvalPreset,
            cache_dir: str | Path, *, trunk_sha: str | None, bf16: bool | None, batch_size: int,
            num_workers: int, progress: bool, name: str = "") -> np.ndarray:
    """``fn`` of every photo (float16), from ``cache_dir`` when computed before."""
    bf16 = cpu_has_bf16() if bf16 is None else bf16
    trunk_sha = trunk_sha or state_checksum(trunk)
    label = f"{trunk.backbone}{'-' + name if name else ''}-{pre['view']}"
    path = Path(cache_dir) / f"{label}-{cache_key(trunk_sha, pre, table, bf16)}.npy"
    if path.is_file():
        logger.info("trunk %s from cache %s", name or "features", path)
        return np.load(path)
    loader = torch.utils.data.DataLoader(PhotoDataset(table, preset), batch_size=batch_size,
                                         num_workers=num_workers, shuffle=False)
    prepare_for_inference(trunk)
    out = np.empty((len(table), *shape), dtype=np.float16)
    with torch.inference_mode(), autocast(bf16):
        for x, _, idx in tqdm(loader, desc=label, disable=not progress):
            out[idx.numpy()] = fn(x.to(memory_format=torch.channels_last)).float().numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out
