"""Training: YAML config -> heads (on cached trunk features) or lenet (end to end) -> model folder.

Frozen trunks (the paper's transfer recipe, ``frozen.py``): trunk features of every photo are
computed once and cached (plus augmented views of the training photos), then the 14 heads, the
cluster gate and the suitability heads train on the cached features in seconds. ``lenet`` trains
end to end (``lenet.py``). Both stop early on the validation split's mean balanced accuracy, then
calibrate on validation, measure on test and write a model folder whose metadata carries the
resolved config and the measured metrics. Under torchrun every stage shards its photos across the
ranks (``distributed.py``, ``ddp.py``) and rank 0 alone writes the model folder.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from .. import distributed
from ..backbones import get_backbone
from ..calibration import TemperatureScaling
from ..checkpoint import save_checkpoint
from ..data import preprocess_config
from ..decision import DecisionLayer, prior_thresholds, tune_thresholds
from ..labels import LabelTable, read_labels
from ..metrics import evaluate_probs, expected_calibration_error, json_safe
from .config import TrainConfig, plain
from .finetune import TUNE_STATE
from .frozen import train_frozen
from .lenet import TRAIN_STATE, train_lenet

__all__ = ["train", "data_summary", "finish_folder"]

logger = logging.getLogger(__name__)


def data_summary(table: LabelTable) -> dict:
    """Photos and items per split and source, stored in the model card."""
    out = {"photos": len(table), "items": len(set(table.item))}
    for split in ("train", "val", "test"):
        sel = table.split == split
        out[split] = {"photos": int(sel.sum()),
                      "sources": {s: int((table.source[sel] == s).sum()) for s in sorted(set(table.source[sel]))}}
    return out


def train(cfg: TrainConfig) -> Path:
    """Run one training as configured; returns the model folder."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    scratch = get_backbone(cfg.model.backbone).kind == "scratch"
    table = read_labels(cfg.data, require_splits=("train", "val"), skip_bad=cfg.skip_bad)  # problems before training
    splits = {s: table.subset(table.split == s) for s in ("train", "val", "test")}
    t0 = time.time()
    if scratch:  # lenet: end to end on pixels
        model, history, logits_test = train_lenet(cfg, splits)
        decision, trunk_info = DecisionLayer(), {}
        logits_val = history.pop("val_logits")
        if logits_val is not None:
            decision.calibration = TemperatureScaling().fit(logits_val, splits["val"].y)
            decision.thresholds = tune_thresholds(decision.photo_probs(logits_val), splits["val"].y,
                                                  prior_thresholds(splits["train"].y, cfg.balance))
        probs_test = decision.photo_probs(logits_test) if logits_test is not None else None
    else:
        model, history, probs_test, decision, trunk_info = train_frozen(cfg, table)
    history["wall_seconds"] = round(time.time() - t0, 1)
    metrics = evaluate_probs(probs_test, splits["test"], decision.thresholds) if probs_test is not None else {}
    if probs_test is not None:
        metrics["ece"] = expected_calibration_error(probs_test, splits["test"].y)
    meta = {"backbone": cfg.model.backbone, "trunk": trunk_info, "preprocessing": preprocess_config(cfg.model.backbone),
            "decision": decision.to_dict(),
            "training": {"config": plain(asdict(cfg)), "history": history, "data": data_summary(table)},
            "metrics": {"test": json_safe(metrics)}}
    folder = Path(cfg.out)
    if distributed.is_main():  # every rank holds the same model; one writes it
        save_checkpoint(model, folder, meta)
        (folder / "config.yaml").write_text(yaml.safe_dump(plain(asdict(cfg)), sort_keys=False))
        finish_folder(folder)
        logger.info("model written to %s", folder)
    distributed.barrier()
    return folder


def finish_folder(folder: Path) -> None:
    """A finished model folder: readable by everyone (a model is shared, served by another user),
    and without the resume states of its training (``tune_state.pt`` is 72 MB for lite0)."""
    for name in (TUNE_STATE, TRAIN_STATE):
        (folder / name).unlink(missing_ok=True)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o644)
