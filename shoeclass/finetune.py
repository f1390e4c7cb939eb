"""Retraining the last blocks of an EfficientNet-Lite trunk on the photos (``model.tuned_blocks``).

Frozen ImageNet features stop near 0.95 mean balanced accuracy here. Retraining the last block
and the head convolution adapts the features to shoes at a cost a CPU can afford: the frozen stem
runs once per photo and view (its maps are cached on disk, ``features.stem_maps``), and only the
small tail (one MBConv block at 7×7 and the 1×1 head conv, ~1 M parameters) runs forward and
backward in each epoch. The heads are first trained on the frozen features as usual, then the
tail and the heads are retrained together at a low learning rate under the heads' own loss
(``train_frozen.heads_loss``); the decision layer is fitted afterwards on the tuned features.
On ../shared/data this did not beat the frozen trunk (BENCHMARKS.md): two cached views per photo
are too little augmentation for a million parameters. It is meant for catalogues further from
ImageNet than studio shoe photos.
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch

from .losses import class_weights
from .models import Trunk
from .runtime import autocast

__all__ = ["tail_features", "tune_tail"]

logger = logging.getLogger(__name__)


def tail_features(trunk: Trunk, maps: np.ndarray, batch: int = 512, bf16: bool | None = None) -> np.ndarray:
    """(N, D) float32 pooled features of the tail (eval mode) for (N, C, H, W) stem maps."""
    trunk.eval()
    out = np.empty((len(maps), trunk.dim), dtype=np.float32)
    with torch.inference_mode(), autocast(bf16):
        for i in range(0, len(maps), batch):
            x = torch.from_numpy(maps[i:i + batch]).float().to(memory_format=torch.channels_last)
            out[i:i + batch] = trunk.tail(x).float().numpy()
    return out


def tune_tail(trunk: Trunk, heads: torch.nn.Module, views: list[np.ndarray], y: np.ndarray, w: np.ndarray,
              maps_val: np.ndarray, y_val: np.ndarray, cfg, *, gate: np.ndarray | None = None,
              suit: np.ndarray | None = None, loss_fn, score_fn) -> dict:
    """Retrain ``trunk``'s tail and ``heads`` together on stem maps, in place; keeps the epoch
    best on validation (the starting point, epoch -1, included).

    ``heads`` must already be trained on the frozen trunk's features: fine-tuning from a trained
    head distorts the pretrained features far less than from a random one (Kumar et al. 2022,
    "Fine-Tuning can Distort Pretrained Features"). Batch-norm statistics stay frozen.

    Args:
        views: stem maps of the training photos, one (N, C, H, W) array per view (the eval view
            and augmented ones); each epoch draws one view per photo.
        y, w: (N, 14) labels (0.5 masked) and (N,) sample weights; gate, suit: the heads' other
            targets (see ``train_frozen.fit_heads``).
        maps_val, y_val: validation stem maps and labels.
        cfg: the TrainConfig (``tune_epochs``, ``tune_lr``, ``balance``, ``weight_decay``, ``seed``).
        loss_fn: ``train_frozen.heads_loss``; score_fn: (val logits, y_val) -> score to maximise.

    Returns:
        A history dict (epochs run, best epoch, validation score per epoch, seconds).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    tail_params = [p for m in trunk.tail_modules() for p in m.parameters()]
    trunk.requires_grad_(False)
    for p in tail_params:
        p.requires_grad_(True)
    head_params = [p for p in heads.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": tail_params}, {"params": head_params}], lr=cfg.tune_lr,
                            weight_decay=cfg.weight_decay)
    batch = 128
    steps_per_epoch = -(-len(y) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.tune_epochs * steps_per_epoch)
    cw = torch.from_numpy(class_weights(y, cfg.balance))
    yt, wt = torch.from_numpy(y), torch.from_numpy(w)
    gt = torch.from_numpy(gate) if gate is not None else None
    st = torch.from_numpy(suit) if suit is not None else None

    def validate() -> float:
        heads.eval()
        with torch.inference_mode():
            return score_fn(heads(torch.from_numpy(tail_features(trunk, maps_val)))["logits"].numpy(), y_val)

    scores = [validate()]
    best, best_epoch = scores[0], -1
    best_state = copy.deepcopy((trunk.tuned_state(), heads.state_dict()))
    for epoch in range(cfg.tune_epochs):
        trunk.eval()  # batch-norm statistics frozen; drop connect off
        heads.train()
        view = rng.integers(len(views), size=len(y))
        for idx in np.array_split(rng.permutation(len(y)), steps_per_epoch):
            x = np.stack([views[v][i] for v, i in zip(view[idx], idx)])
            x = torch.from_numpy(x).float().to(memory_format=torch.channels_last)
            with autocast():
                z = trunk.tail(x)
            out = heads(z.float())
            loss = loss_fn(out, yt[idx], cw, wt[idx], None if gt is None else gt[idx], None if st is None else st[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        scores.append(validate())
        logger.info("tail epoch %d val mean balanced accuracy %.4f (%.0f s)", epoch, scores[-1], time.time() - t0)
        if scores[-1] > best:
            best, best_epoch = scores[-1], epoch
            best_state = copy.deepcopy((trunk.tuned_state(), heads.state_dict()))
    trunk.load_state_dict(best_state[0], strict=False)
    heads.load_state_dict(best_state[1])
    trunk.requires_grad_(False).eval()
    return {"epochs_run": cfg.tune_epochs, "best_epoch": best_epoch, "val_scores": [round(v, 4) for v in scores],
            "val_mean_balanced_accuracy": best, "seconds": round(time.time() - t0, 1)}
