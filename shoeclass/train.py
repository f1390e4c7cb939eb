"""Training: YAML config -> heads (on cached trunk features) or lenet (end to end) -> model folder.

Frozen trunks (the paper's transfer recipe): trunk features of every photo are computed once and
cached (plus augmented views of the training photos), then the 14 heads, the cluster gate and the
suitability heads train on the cached features in seconds. ``lenet`` trains end to end
(``train_images.py``); frozen trunks in ``train_frozen.py``. Both stop early on the validation split's mean balanced accuracy, then
calibrate on validation, measure on test and write a model folder whose metadata carries the
resolved config and the measured metrics.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.special import expit

from .calibration import TemperatureScaling
from .checkpoint import save_checkpoint
from .data import preprocess_config
from .decision import DecisionLayer, prior_thresholds, tune_thresholds
from .labels import LabelTable, read_labels
from .metrics import attribute_metrics, expected_calibration_error, summarize
from .models import ModelConfig

__all__ = ["TrainConfig", "load_config", "train"]

logger = logging.getLogger(__name__)

@dataclass
class TrainConfig:
    """Everything a training run depends on; saved next to the checkpoint."""

    data: str = "../shared/data"
    out: str = "runs/model"
    model: ModelConfig = field(default_factory=ModelConfig)
    trunk_weights: str | None = "imagenet"
    optimizer: str = "adam"  # adam | sgd, as in the paper
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    epochs: int = 40
    patience: int = 6
    balance: float = 1.0  # class reweighting power, see losses.class_weights
    aug_views: int = 2  # augmented views of each training photo in the feature cache
    source_weights: dict = field(default_factory=dict)  # e.g. {worn: 2.0}
    origin_weights: dict = field(default_factory=dict)  # e.g. {eye: 2.0}: photos tagged by eye for all 13
    ema: float = 0.0  # heads on cached features: decay of the weight average (0 = off)
    tune_epochs: int = 8  # model.tuned_blocks > 0: epochs of tail + heads fine-tuning (finetune.py)
    tune_lr: float = 5e-5  # its peak learning rate (one-cycle schedule; 1e-4 measured worse)
    tune_size: int = 160  # its training resolution (inference stays at 224)
    tune_batch: int = 64
    seed: int = 0
    cache_dir: str = ".cache/features"
    progress: bool = True
    num_workers: int = 1


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """A TrainConfig from YAML plus ``key=value`` overrides (``model.hidden=512`` reaches into model).

    Raises:
        ValueError: an unknown key, naming it and the allowed keys.
    """
    raw = yaml.safe_load(Path(path).read_text()) if path else {}
    raw = raw or {}
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    allowed = {f.name for f in fields(TrainConfig)}
    unknown = set(raw) - allowed
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    model_raw = raw.pop("model", {}) or {}
    allowed_model = {f.name for f in fields(ModelConfig)}
    if set(model_raw) - allowed_model:
        raise ValueError(f"unknown model key(s) {sorted(set(model_raw) - allowed_model)}; allowed: {sorted(allowed_model)}")
    cfg = TrainConfig(**_floats(TrainConfig, raw), model=ModelConfig(**_floats(ModelConfig, model_raw)))
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    return cfg


def _floats(cls, raw: dict) -> dict:
    """Float settings written as YAML reads ``5e-5`` (a string: YAML 1.1 floats need a dot) made floats."""
    out = dict(raw)
    for f in fields(cls):
        if isinstance(f.default, float) and isinstance(out.get(f.name), (str, int)) and not isinstance(out[f.name], bool):
            try:
                out[f.name] = float(out[f.name])
            except ValueError:
                raise ValueError(f"config key {f.name!r} must be a number, got {out[f.name]!r}") from None
    return out


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def sample_weights(table: LabelTable, cfg: TrainConfig) -> np.ndarray:
    w = np.ones(len(table), dtype=np.float32)
    for source, factor in cfg.source_weights.items():
        w[table.source == source] *= factor
    for origin, factor in cfg.origin_weights.items():
        w[table.origin == origin] *= factor
    return w


def val_score(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean balanced accuracy; on tiny validation sets (no attribute with 10 of each class) the
    mean over attributes with both classes, then the mean accuracy."""
    per = attribute_metrics(expit(logits), y)
    score = summarize(per)["mean_balanced_accuracy"]
    if np.isnan(score):
        both = [m["balanced_accuracy"] for m in per.values() if m["n_pos"] and m["n_neg"]]
        score = float(np.mean(both)) if both else summarize(per)["mean_accuracy"]
    return float(np.nan_to_num(score, nan=0.0))

def data_summary(table: LabelTable) -> dict:
    out = {"photos": len(table), "items": len(set(table.item))}
    for split in ("train", "val", "test"):
        sel = table.split == split
        out[split] = {"photos": int(sel.sum()),
                      "sources": {s: int((table.source[sel] == s).sum()) for s in sorted(set(table.source[sel]))}}
    return out


def evaluate_probs(probs: np.ndarray, table: LabelTable, thresholds: np.ndarray | None = None) -> dict:
    """Metrics on a split, whole and by worn / catalogue photos, at the model's thresholds."""
    groups = {"all": np.ones(len(table), bool), "worn": table.source == "worn",
              "catalogue": table.source != "worn"}
    out = {}
    for name, sel in groups.items():
        if sel.any():
            per = attribute_metrics(probs[sel], table.y[sel], thresholds=thresholds)
            out[name] = {"summary": summarize(per), "per_attribute": per}
    return out


def train(cfg: TrainConfig) -> Path:
    """Run one training as configured; returns the model folder."""
    from .train_frozen import (
        train_frozen,  # imported here: both modules build on this one
    )
    from .train_images import train_lenet  # lenet trains end to end on pixels

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    table = read_labels(cfg.data, require_splits=("train", "val"))  # every problem before training starts
    splits = {s: table.subset(table.split == s) for s in ("train", "val", "test")}
    t0 = time.time()
    if cfg.model.backbone == "lenet":
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
            "training": {"config": _plain(asdict(cfg)), "history": history, "data": data_summary(table)},
            "metrics": {"test": metrics}}
    folder = save_checkpoint(model, cfg.out, meta)
    (Path(cfg.out) / "config.yaml").write_text(yaml.safe_dump(_plain(asdict(cfg)), sort_keys=False))
    logger.info("model written to %s", folder)
    return folder

def _plain(obj):
    return yaml.safe_load(yaml.safe_dump(obj)) if obj is not None else None
