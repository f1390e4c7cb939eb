"""Fine-tuning the last blocks of an EfficientNet-Lite trunk on the photos (``model.tuned_blocks``).

Frozen ImageNet features stop near 0.95 mean balanced accuracy here. Retraining the trunk's later
blocks adapts the features to shoes at a cost a CPU can afford:

- the preprocessed photos are cached once as uint8 pixels (``pixels.pixel_cache``) and
  augmented on the fly with tensor operations (crop, flip, rotation, brightness, contrast), so
  every epoch sees new views: with a few fixed cached views the retrained blocks overfit;
- the early blocks stay frozen and run without gradients; the tail (the blocks from
  ``Trunk.cut``, the head conv) and the heads train together at a low learning rate, starting
  from heads already trained on the frozen features (LP-FT: Kumar et al. 2022, "Fine-Tuning can
  Distort Pretrained Features and Underperform Out-of-Distribution");
- training runs at a lower resolution than inference (``tune_size``, 160 px: twice the speed),
  which with random crops also suits the test resolution (Touvron et al. 2019, "Fixing the
  train-test resolution discrepancy"); batch-norm statistics stay frozen (eval mode) because the
  batches are small and the resolution differs;
- class weights are capped at 10×: the rarest outputs' positives would otherwise dominate the
  gradient of the trunk;
- every epoch ends with a checkpoint, so an interrupted run resumes from its last complete epoch;
- under torchrun the ranks share every global batch and train as one process would (``ddp.py``);
  rank 0 writes the checkpoints.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..attributes import HEIGHT_KEYS, MASK, OUTPUT_KEYS
from ..labels import class_weights
from ..models import Trunk
from ..runtime import autocast, batched
from .augment import apply_views, draw_views, wild_views
from .ddp import global_batches, mine, seed_dropout, wrap
from .pixels import pixels_to_tensor

__all__ = ["pixel_features", "tune_trunk"]

logger = logging.getLogger(__name__)

MAX_CLASS_WEIGHT = 10.0
TUNE_STATE = "tune_state.pt"  # the resume state in the model folder, removed once the model is written
HEIGHTS = [OUTPUT_KEYS.index(k) for k in HEIGHT_KEYS]


def _normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def pixel_features(trunk: Trunk, pixels: np.ndarray | torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                   batch: int = 128, progress: bool = False) -> np.ndarray:
    """(N, D) float32 pooled trunk features (eval mode, bf16 where supported) of cached
    (N, H, W, 3) uint8 pixels, computed on the trunk's device; ``mean``/``std`` are the
    backbone's (1, 3, 1, 1) normalisation. Under torchrun every rank calls it with the same
    photos: each computes its shard (rows r, r+N, …) and every rank gets all rows."""
    trunk.eval()
    dev = next(trunk.parameters()).device
    mean, std = mean.to(dev), std.to(dev)
    def run(px: np.ndarray) -> dict[str, np.ndarray]:
        with autocast(device=dev):
            return {"features": trunk(_normalize(pixels_to_tensor(px, dev), mean, std)).float().cpu().numpy()}

    part = pixels[mine()]
    out = batched(run, part, batch, progress=progress and distributed.is_main(), desc="features")
    return distributed.gather_rows(out.get("features", np.empty((0, trunk.dim), np.float32)), len(pixels))


class _TailHeads(torch.nn.Module):
    """The trained part, the trunk's tail and the heads (the module DDP wraps): the stem's map -> outputs."""

    def __init__(self, trunk: Trunk, heads: torch.nn.Module) -> None:
        super().__init__()
        self.trunk, self.heads = trunk, heads

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.trunk.tail(x))


def _wild(x: torch.Tensor, yb: torch.Tensor, sb: torch.Tensor | None, pixels, sel: np.ndarray,
          wild: torch.Tensor, p: float, bg: torch.Tensor, gen: torch.Generator):
    """This rank's rows ``x`` of the global batch ``sel`` with the picked catalogue photos made
    street-like (``augment.wild_views``); a photo whose shaft top is hidden has its height labels
    masked and is marked unsuitable for them. Every rank draws and makes the views of the whole
    global batch, so that the generator stays in step on every rank, and keeps its own rows'."""
    dev = x.device
    pick = (wild[sel] & (torch.rand(len(sel), generator=gen) < p)).to(dev)  # (B,) of the global batch
    if not pick.any():
        return x, yb, sb
    views, hidden = wild_views(pixels_to_tensor(pixels[sel[pick.cpu().numpy()]], dev), bg, gen)
    own, slot = pick[mine()], (pick.cumsum(0) - 1)[mine()]  # this rank's rows: picked, and where in views
    if not own.any():
        return x, yb, sb
    x, yb = x.clone(), yb.clone()
    x[own] = views[slot[own]]
    rows = own.nonzero()[:, 0][hidden[slot[own]]]
    heights = torch.tensor(HEIGHTS, device=dev)
    yb[rows[:, None], heights] = MASK
    if sb is not None:
        sb = sb.clone()
        sb[rows[:, None], heights] = 0.0
    return x, yb, sb


def tune_trunk(trunk: Trunk, heads: torch.nn.Module, pixels: np.ndarray, y: np.ndarray, w: np.ndarray,
               pixels_val: np.ndarray, y_val: np.ndarray, cfg, *, mean: torch.Tensor, std: torch.Tensor,
               gate: np.ndarray | None = None, suit: np.ndarray | None = None, loss_fn, score_fn,
               wild: np.ndarray | None = None, backgrounds: np.ndarray | torch.Tensor | None = None,
               device: torch.device | str | None = None) -> dict:
    """Retrain ``trunk``'s tail and ``heads`` together on augmented photos, in place; keeps the
    epoch best on validation (the starting point, epoch -1, included).

    Args:
        pixels: (N, 224, 224, 3) uint8 preprocessed training photos (may be memory-mapped).
        y, w: (N, 14) labels (0.5 masked) and (N,) sample weights; gate, suit: the heads' other
            targets (see ``frozen.fit_heads``).
        pixels_val, y_val: validation photos (scored at full resolution, unaugmented) and labels.
        cfg: the TrainConfig (``tune_epochs``, ``tune_lr``, ``tune_size``, ``tune_batch``,
            ``balance``, ``weight_decay``, ``seed``, ``out``, ``progress``).
        mean, std: the backbone's (1, 3, 1, 1) normalisation.
        loss_fn: ``frozen.heads_loss``; score_fn: (val logits, y_val) -> score to maximise.
        wild: (N,) bool, the photos that :func:`augment.wild_views` may turn into street-like
            photos (catalogue photos), each with probability ``cfg.wild_aug``; a photo whose shaft
            top it hides has its height labels masked and is marked unsuitable for them.
        backgrounds: (K, H, W, 3) uint8 in-the-wild photos, the scenes pasted behind them.
        device: where to train (default: this process's GPU when CUDA is present, else the CPU);
            ``pixels`` may be a uint8 tensor already there.

    Returns:
        A history dict (epochs run, best epoch, validation score per epoch, seconds).
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = torch.device(device) if device is not None else distributed.device()
    trunk.to(dev)
    heads.to(dev)
    mean, std = mean.to(dev), std.to(dev)
    wild_p = getattr(cfg, "wild_aug", 0.0) if wild is not None and backgrounds is not None else 0.0
    if wild_p:
        bg = pixels_to_tensor(backgrounds, dev)  # (K, 3, H, W) scenes
    tail_params = [p for m in trunk.tail_modules() for p in m.parameters()]
    trunk.requires_grad_(False)
    for p in tail_params:
        p.requires_grad_(True)
    trunk.to(memory_format=torch.channels_last)
    head_params = [p for p in heads.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": tail_params}, {"params": head_params}], lr=cfg.tune_lr,
                            weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(y) // cfg.tune_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.tune_lr, total_steps=cfg.tune_epochs * steps_per_epoch,
                                                pct_start=0.1)
    # Class weights capped: a rare output's few positives (weights of several hundred) would
    # otherwise steer the whole trunk. The heads keep the prior of their uncapped first training
    # (measured on validation), so the decision layer's priors stay those (frozen.py).
    cw = torch.from_numpy(class_weights(y, cfg.balance, MAX_CLASS_WEIGHT)).to(dev)
    yt, wt = torch.from_numpy(y).to(dev), torch.from_numpy(w).to(dev)
    gt = torch.from_numpy(gate).to(dev) if gate is not None else None
    st = torch.from_numpy(suit).to(dev) if suit is not None else None
    wild_t = torch.from_numpy(np.asarray(wild, bool)) if wild_p else None

    def validate() -> float:  # the same on every rank: the features are gathered
        heads.eval()
        feats = torch.from_numpy(pixel_features(trunk, pixels_val, mean, std)).to(dev)
        with torch.inference_mode():
            return score_fn(heads(feats)["logits"].float().cpu().numpy(), y_val)

    state_path = Path(cfg.out) / TUNE_STATE
    settings = {k: getattr(cfg, k) for k in ("tune_epochs", "tune_lr", "tune_size", "tune_batch", "seed")}
    settings["tuned_blocks"], settings["n_train"], settings["wild_aug"] = trunk.tuned_blocks, len(y), wild_p
    if state_path.is_file():  # resume an interrupted run from its last complete epoch
        s = torch.load(state_path, map_location="cpu", weights_only=True)
        if s.get("settings") != settings:
            raise ValueError(f"{state_path} was written by a run with other settings ({s.get('settings')}); "
                             "delete it to start afresh or train into another out folder")
        trunk.load_state_dict({k: v.to(dev) for k, v in s["trunk"].items()}, strict=False)
        heads.load_state_dict(s["heads"])
        opt.load_state_dict(s["optimizer"])
        sched.load_state_dict(s["scheduler"])
        gen.set_state(s["generator"])
        scores, best_epoch, best_state, spent = s["scores"], s["best_epoch"], s["best_state"], s["seconds"]
        logger.info("resuming trunk tuning at epoch %d", len(scores) - 1)
    else:
        scores, best_epoch, spent = [validate()], -1, 0.0
        best_state = copy.deepcopy((trunk.tuned_state(), heads.state_dict()))
    net, n, main = wrap(_TailHeads(trunk, heads)), distributed.world_size(), distributed.is_main()
    seed_dropout(cfg.seed)
    t0 = time.time() - spent
    for epoch in range(len(scores) - 1, cfg.tune_epochs):
        trunk.eval()  # batch-norm statistics frozen; drop connect off
        heads.train()
        order, losses = torch.randperm(len(y), generator=gen), []
        for sel in tqdm(global_batches(order, cfg.tune_batch), desc=f"tune epoch {epoch}",
                        disable=not (cfg.progress and main)):
            rows = sel[mine()]  # this rank's share of the global batch
            x = pixels_to_tensor(pixels[rows], dev)  # (b, 3, 224, 224) in [0, 1]
            yb, sb = yt[rows], None if st is None else st[rows]
            if wild_p:  # catalogue photos made street-like; a hidden shaft top masks the heights
                x, yb, sb = _wild(x, yb, sb, pixels, sel, wild_t, wild_p, bg, gen)
            draws = draw_views(len(sel), gen)  # the whole global batch's views: the same on every rank
            x = _normalize(apply_views(x, draws[mine()], cfg.tune_size), mean, std)  # (b, 3, S, S)
            with torch.no_grad(), autocast(cfg.bf16, dev):  # the frozen blocks: bf16 is 5× faster here; the tail trains in fp32
                x = trunk.stem(x).float()
            loss = loss_fn(net(x), yb, cw, wt[rows], None if gt is None else gt[rows], sb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        scores.append(validate())
        epoch_loss = distributed.all_sum(torch.tensor(np.mean(losses))).item() / n  # as one process's
        logger.info("tune epoch %d loss %.4f val mean balanced accuracy %.4f (%.0f s)", epoch, epoch_loss,
                    scores[-1], time.time() - t0)
        if scores[-1] > max(scores[:-1]):
            best_epoch, best_state = epoch, copy.deepcopy((trunk.tuned_state(), heads.state_dict()))
        if main:  # every rank holds the same state; one writes it
            state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = state_path.with_suffix(".tmp")
            torch.save({"trunk": trunk.tuned_state(), "heads": heads.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "generator": gen.get_state(), "scores": scores,
                        "best_epoch": best_epoch, "best_state": best_state, "seconds": time.time() - t0,
                        "settings": settings}, tmp)
            tmp.replace(state_path)  # the previous complete epoch stays loadable until this one is written
    trunk.load_state_dict(best_state[0], strict=False)
    heads.load_state_dict(best_state[1])
    trunk.requires_grad_(False).eval().cpu()
    heads.cpu()
    return {"epochs_run": cfg.tune_epochs, "best_epoch": best_epoch, "val_scores": [round(v, 4) for v in scores],
            "val_mean_balanced_accuracy": max(scores), "seconds": round(time.time() - t0, 1)}
