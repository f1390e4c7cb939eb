"""End-to-end training of the from-scratch ``lenet`` on preprocessed pixels.

The photos come from the 112-pixel cache (``pixels.pixel_cache``), each epoch as new random views
(``augment.augment_views``: crop, flip, rotation, brightness, contrast). Each epoch ends with a
checkpoint of model, optimizer and epoch, so an interrupted run resumes from its last complete epoch.
Under torchrun the ranks share every global batch and train as one process would (``ddp.py``);
rank 0 writes the checkpoints.
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

from .. import distributed
from ..attributes import MASK, OUTPUT_KEYS
from ..data import EvalPreset
from ..labels import LabelTable, class_weights
from ..metrics import val_score
from ..models import build_model
from ..runtime import batched
from .augment import apply_views, draw_views
from .config import TrainConfig, make_optimizer
from .ddp import global_batches, global_batchnorm, local_batchnorm, mine, seed_dropout, wrap
from .losses import masked_bce
from .pixels import pixel_cache, pixels_to_tensor

__all__ = ["train_lenet"]

logger = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"  # the resume state in the model folder, removed once the model is written


class _OnViews(torch.nn.Module):
    """lenet on 112-pixel views (already downsampled) -> (B, 14) logits: the module DDP wraps."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.heads(self.model.trunk(x, downsampled=True))["logits"]


def _predict(model: torch.nn.Module, pixels: np.ndarray, mean, std, batch: int = 256) -> np.ndarray:
    """Logits (N, 14) from cached 112-pixel inputs; under torchrun each rank computes its shard
    and every rank gets all rows."""
    model.eval()
    dev = next(model.parameters()).device
    def run(px: np.ndarray) -> dict[str, np.ndarray]:
        x = ((pixels_to_tensor(px, dev) - mean) / std).contiguous(memory_format=torch.channels_last)
        return {"logits": model.heads(model.trunk(x, downsampled=True))["logits"].float().cpu().numpy()}

    part = pixels[mine()]
    out = batched(run, part, batch).get("logits", np.empty((0, len(OUTPUT_KEYS)), np.float32))
    return distributed.gather_rows(out, len(pixels))


def _resumable(config: dict) -> dict:
    """The settings a resumed run must share with the run that wrote the state."""
    return {k: v for k, v in config.items() if k not in ("progress", "num_workers", "cache_dir", "out")}


def train_lenet(cfg: TrainConfig, splits: dict[str, LabelTable]) -> tuple[torch.nn.Module, dict, np.ndarray | None]:
    """Train lenet with early stopping on validation mean balanced accuracy.

    Returns:
        (model with the best validation weights, history with the validation logits, test logits or None).
    """
    preset, dev, main = EvalPreset("lenet"), distributed.device(), distributed.is_main()
    mean, std = (t.to(dev) for t in preset.stats())
    pix = {k: pixel_cache(v, preset, cfg.cache_dir, cfg.progress) for k, v in splits.items() if len(v)}
    model = global_batchnorm(build_model(cfg.model)).to(dev, memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), cfg)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, epochs=cfg.epochs,
                                                steps_per_epoch=-(-len(pix["train"]) // cfg.batch_size))
    y = torch.from_numpy(splits["train"].y).to(dev)
    cw = torch.from_numpy(class_weights(splits["train"].y, cfg.balance)).to(dev)
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
    net, n = wrap(_OnViews(model)), distributed.world_size()
    seed_dropout(cfg.seed)
    t0 = time.time()
    for epoch in range(start, cfg.epochs):
        model.train()
        order, losses = torch.randperm(len(y), generator=gen), []
        for sel in tqdm(global_batches(order, cfg.batch_size), desc=f"lenet epoch {epoch}",
                        disable=not (cfg.progress and main)):
            draws = draw_views(len(sel), gen)  # the whole global batch's views: the same on every rank
            rows = sel[mine()]
            x = apply_views(pixels_to_tensor(pix["train"][rows], dev), draws[mine()], pix["train"].shape[1])
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            yb = y[rows]
            known = distributed.all_sum((yb != MASK).sum().float()) / n  # the global batch's mean, per rank
            loss = masked_bce(net(x), yb, cw, denominator=known.clamp(min=1))  # fp32: faster than bf16 for small convs
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        score = val_score(_predict(model, pix["val"], mean, std), splits["val"].y)
        history.append({"epoch": epoch, "val_mean_balanced_accuracy": score, "seconds": round(time.time() - t0, 1)})
        epoch_loss = distributed.all_sum(torch.tensor(np.mean(losses))).item() / n  # as one process's
        logger.info("lenet epoch %d loss %.4f val mean balanced accuracy %.4f", epoch, epoch_loss, score)
        if score > best:
            best, best_state, bad = score, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
        if main:  # every rank holds the same state; one writes it
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
    val_logits = _predict(model, pix["val"], mean, std)
    return local_batchnorm(model).cpu(), {"epochs": history, "val_mean_balanced_accuracy": best,
                                          "val_logits": val_logits}, logits
