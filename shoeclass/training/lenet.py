"""End-to-end training of the from-scratch ``lenet`` on preprocessed pixels.

The photos come from the 112-pixel cache (``pixels.pixel_cache``), each epoch as new random views
(``augment.augment_views``: crop, flip, rotation, brightness, contrast). Each epoch ends with a
checkpoint of model, optimizer and epoch, so an interrupted run resumes from its last complete epoch.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import EvalPreset
from ..labels import LabelTable, class_weights
from ..metrics import val_score
from ..models import build_model
from .augment import augment_views
from .config import TrainConfig, make_optimizer
from .losses import masked_bce
from .pixels import pixel_cache, pixels_to_tensor

__all__ = ["train_lenet"]

logger = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"  # the resume state in the model folder, removed once the model is written


def _predict(model: torch.nn.Module, pixels: np.ndarray, mean, std, batch: int = 256) -> np.ndarray:
    """Logits (N, 14) from cached 112-pixel inputs."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            x = (pixels_to_tensor(pixels[i:i + batch]) - mean) / std
            z = model.trunk(x.contiguous(memory_format=torch.channels_last), downsampled=True)
            out.append(model.heads(z)["logits"].float().numpy())
    return np.concatenate(out)


def _resumable(config: dict) -> dict:
    """The settings a resumed run must share with the run that wrote the state."""
    return {k: v for k, v in config.items() if k not in ("progress", "num_workers", "cache_dir", "out")}


def train_lenet(cfg: TrainConfig, splits: dict[str, LabelTable]) -> tuple[torch.nn.Module, dict, np.ndarray | None]:
    """Train lenet with early stopping on validation mean balanced accuracy.

    Returns:
        (model with the best validation weights, history with the validation logits, test logits or None).
    """
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
    state_path = Path(cfg.out) / TRAIN_STATE
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
        order, losses = torch.randperm(len(y), generator=gen), []
        for idx in tqdm(order.split(cfg.batch_size), desc=f"lenet epoch {epoch}", disable=not cfg.progress):
            sel = np.sort(idx.numpy())
            x = augment_views(pixels_to_tensor(pix["train"][sel]), gen, pix["train"].shape[1])
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            logits = model.heads(model.trunk(x, downsampled=True))["logits"]  # fp32: faster than bf16 for small convs
            loss = masked_bce(logits, y[sel], cw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        score = val_score(_predict(model, pix["val"], mean, std), splits["val"].y)
        history.append({"epoch": epoch, "val_mean_balanced_accuracy": score, "seconds": round(time.time() - t0, 1)})
        logger.info("lenet epoch %d loss %.4f val mean balanced accuracy %.4f", epoch, np.mean(losses), score)
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
