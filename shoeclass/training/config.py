"""Training settings: the YAML config as a dataclass, and what it decides about the optimiser and
the photos' weights."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml

from ..labels import LabelTable
from ..models import ModelConfig

__all__ = ["TrainConfig", "load_config", "make_optimizer", "sample_weights", "plain"]


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
    wild_aug: float = 0.0  # fine-tuning: share of catalogue photos made street-like (pixels.wild_views)
    bf16: bool | None = None  # heads and frozen blocks in bf16 autocast (None: where the CPU has it; False: fp32)
    seed: int = 0
    cache_dir: str = ".cache/features"
    progress: bool = True
    num_workers: int = 1
    skip_bad: bool = False  # leave out photos that cannot be decoded (labels.read_labels)


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
    """SGD or AdamW over ``params``; AdamW fused (one kernel for every tensor: 0.7 against 3-4 ms a
    step for the heads on 2 CPU cores), SGD over all tensors at once (``foreach``)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def sample_weights(table: LabelTable, cfg: TrainConfig) -> np.ndarray:
    w = np.ones(len(table), dtype=np.float32)
    for source, factor in cfg.source_weights.items():
        w[table.source == source] *= factor
    for origin, factor in cfg.origin_weights.items():
        w[table.origin == origin] *= factor
    return w


def plain(obj):
    """A config dict as plain YAML types (what model.json and config.yaml store)."""
    return yaml.safe_load(yaml.safe_dump(obj)) if obj is not None else None
