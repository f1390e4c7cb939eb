"""The preprocessed photos as a uint8 pixel cache (random views of them: ``augment.augment_views``).

Decoding and preprocessing every photo each epoch costs more on a 2-core CPU than the small nets
that train on them (lenet, a fine-tuned trunk tail), so the preprocessed 224×224 pixels (or
lenet's 112×112) are cached once on disk and memory-mapped; every epoch then draws new random
views of them with tensor operations (``augment.augment_views``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..data import EvalPreset, preprocess_config
from ..images import ImageError, load_image
from ..labels import LabelTable, unreadable_photo

__all__ = ["pixel_cache", "pixel_cache_path", "pixels_to_tensor"]


def pixel_cache_path(table: LabelTable, preset: EvalPreset, cache_dir: str | Path, size: int = 112) -> Path:
    """The file :func:`pixel_cache` reads and writes: keyed by the photo list and the
    preprocessing steps that made the pixels."""
    if size not in (112, 224):
        raise ValueError(f"size must be 112 or 224, got {size}")
    steps = {k: v for k, v in preprocess_config(preset.backbone).items() if k not in ("mean", "std")}
    blob = json.dumps(steps, sort_keys=True) + "\n" + "\n".join(map(str, table.image))
    return Path(cache_dir) / f"pixels{size}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.npy"


def pixel_cache(table: LabelTable, preset: EvalPreset, cache_dir: str | Path, progress: bool = True,
                size: int = 112) -> np.ndarray:
    """(N, size, size, 3) uint8 preprocessed pixels of every photo, memory-mapped from the cache:
    224 as preprocessed, or 112, 2×2-averaged as lenet's first layer does.

    Under torchrun rank r of N decodes photos r, r+N, … into the one file rank 0 creates (on a
    file system every rank sees), which rank 0 renames into place once every rank is done."""
    path = pixel_cache_path(table, preset, cache_dir, size)
    if not path.is_file():
        tmp, shape = path.with_suffix(".tmp.npy"), (len(table), size, size, 3)
        if distributed.is_main():
            path.parent.mkdir(parents=True, exist_ok=True)
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
        distributed.barrier()
        arr = np.lib.format.open_memmap(tmp, mode="r+")
        rows = range(distributed.rank(), len(table), distributed.world_size())
        paths = table.paths()
        for i in tqdm(rows, desc=f"pixels{size}", disable=not (progress and distributed.is_main())):
            try:
                px = preset.pixels(load_image(paths[i]))  # (224, 224, 3) uint8
            except ImageError as exc:
                raise unreadable_photo(table, i, str(exc)) from None
            if size == 112:
                px = np.rint(px.astype(np.float32).reshape(112, 2, 112, 2, 3).mean((1, 3))).astype(np.uint8)
            arr[i] = px
        arr.flush()
        del arr
        distributed.barrier()
        if distributed.is_main():
            tmp.replace(path)
        distributed.barrier()
    return np.load(path, mmap_mode="r")


def pixels_to_tensor(pixels: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, H, W, 3) uint8 rows of a pixel cache (an array, or a tensor already on ``device``) ->
    (B, 3, H, W) float in [0, 1] on ``device``."""
    t = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(np.array(pixels))
    return t.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
