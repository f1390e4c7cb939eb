"""End-to-end training of the from-scratch ``lenet`` on preprocessed pixels.

Decoding and preprocessing every photo each epoch would cost more than the small net itself on a
2-core CPU, so the preprocessed 224×224 pixels are cached once as a uint8 array on disk
(memory-mapped) and augmented on the fly with cheap tensor operations (flip, crop-and-resize,
brightness/contrast). Each epoch ends with a checkpoint of model, optimizer and epoch, so an
interrupted run resumes from its last complete epoch.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import EvalPreset, preprocess_config
from .images import load_image
from .labels import LabelTable
from .losses import class_weights, masked_bce
from .models import build_model

__all__ = ["pixel_cache", "pixel_cache_path", "train_lenet", "augment_batch"]

logger = logging.getLogger(__name__)


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
    224 as preprocessed, or 112, 2×2-averaged as lenet's first layer does."""
    path = pixel_cache_path(table, preset, cache_dir, size)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(table), size, size, 3))
        for i, p in enumerate(tqdm(table.paths(), desc=f"pixels{size}", disable=not progress)):
            px = preset.pixels(load_image(p))  # (224, 224, 3) uint8
            if size == 112:
                px = np.rint(px.astype(np.float32).reshape(112, 2, 112, 2, 3).mean((1, 3))).astype(np.uint8)
            arr[i] = px
        arr.flush()
        del arr
        tmp.replace(path)
    return np.load(path, mmap_mode="r")


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flip, crop of 50–100 % of the area resized back, brightness and contrast: (B,3,H,W) in [0,1]."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    scale = torch.empty(b).uniform_(0.5, 1.0, generator=gen).sqrt()
    cx = torch.empty(b).uniform_(-1, 1, generator=gen) * (1 - scale)
    cy = torch.empty(b).uniform_(-1, 1, generator=gen) * (1 - scale)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = scale, scale, cx, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="nearest", align_corners=False, padding_mode="border")
    bright = torch.empty(b, 1, 1, 1).uniform_(0.75, 1.25, generator=gen)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.75, 1.25, generator=gen)
    mean = x.mean((1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean * bright).clamp(0, 1)


def _to_input(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).float() / 255.0


def _predict(model: torch.nn.Module, pixels: np.ndarray, mean, std, batch: int = 256) -> np.ndarray:
    """Logits (N, 14) from cached 112-pixel inputs."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            x = (_to_input(pixels[i:i + batch]) - mean) / std
            z = model.trunk(x.contiguous(memory_format=torch.channels_last), downsampled=True)
            out.append(model.heads(z)["logits"].float().numpy())
    return np.concatenate(out)


def _resumable(config: dict) -> dict:
    """The settings a resumed run must share with the run that wrote the state."""
    return {k: v for k, v in config.items() if k not in ("progress", "num_workers", "cache_dir", "out")}


def train_lenet(cfg, splits: dict[str, LabelTable]) -> tuple[torch.nn.Module, dict, np.ndarray | None]:
    """Train lenet with early stopping on validation mean balanced accuracy.

    Returns:
        (model with the best validation weights, history with the validation logits, test logits or None).
    """
    from .train import make_optimizer, val_score

    preset = EvalPreset("lenet")
    mean, std = preset._mean[None], preset._std[None]
    pix = {k: pixel_cache(v, preset, cfg.cache_dir, cfg.progress) for k, v in splits.items() if len(v)}
    model = build_model(cfg.model).to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), cfg)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                steps_per_epoch=-(-len(pix["train"]) // cfg.batch_size))
    y = torch.from_numpy(splits["train"].y)
    cw = torch.from_numpy(class_weights(splits["train"].y, cfg.balance))
    gen = torch.Generator().manual_seed(cfg.seed)
    state_path = Path(cfg.out) / "train_state.pt"
    start, best, best_state, bad, history = 0, -1.0, None, 0, []
    if state_path.is_file():  # resume an interrupted run from its last complete epoch
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        if _resumable(st.get("config", {})) != _resumable(asdict(cfg)):
            raise ValueError(f"{state_path} was written by a different config; delete it to start "
                             "afresh or train into another out folder")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        gen.set_state(st["generator"])
        start, best, bad, best_state = st["epoch"] + 1, st["best"], st["bad"], st["best_model"]
        history = list(st.get("history", []))
        if bad >= cfg.patience:  # the run had already stopped early
            start = cfg.epochs
        logger.info("resuming lenet training at epoch %d", start)
    t0 = time.time()
    for epoch in range(start, cfg.epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for idx in tqdm(order.split(cfg.batch_size), desc=f"lenet epoch {epoch}", disable=not cfg.progress):
            sel = np.sort(idx.numpy())
            x = augment_batch(_to_input(pix["train"][sel]), gen)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            logits = model.heads(model.trunk(x, downsampled=True))["logits"]  # fp32: faster than bf16 for small convs
            loss = masked_bce(logits, y[sel], cw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        score = val_score(_predict(model, pix["val"], mean, std), splits["val"].y)
        history.append({"epoch": epoch, "val_mean_balanced_accuracy": score, "seconds": round(time.time() - t0, 1)})
        logger.info("lenet epoch %d val mean balanced accuracy %.4f", epoch, score)
        if score > best:
            best, best_state, bad = score, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "generator": gen.get_state(), "epoch": epoch, "best": best, "bad": bad,
                    "best_model": best_state, "config": asdict(cfg), "history": history}, tmp)
        tmp.replace(state_path)  # the previous complete epoch stays loadable until this one is written
        if bad >= cfg.patience:
            break
    model.load_state_dict(best_state)
    test = pix.get("test")
    logits = _predict(model, test, mean, std) if test is not None else None
    return model, {"epochs": history, "val_mean_balanced_accuracy": best,
                   "val_logits": _predict(model, pix["val"], mean, std)}, logits
