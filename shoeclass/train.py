"""Training: YAML config -> heads (on cached trunk features) or lenet (end to end) -> model folder.

Frozen trunks (the paper's transfer recipe): trunk features of every photo are computed once and
cached (plus augmented views of the training photos), then the 14 heads, the cluster gate and the
suitability heads train on the cached features in seconds. ``lenet`` trains end to end
(``train_images.py``). Both stop early on the validation split's mean balanced accuracy, then
calibrate on validation, measure on test and write a model folder whose metadata carries the
resolved config and the measured metrics.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml

from scipy.special import expit

from .attributes import MASK, OUTPUT_KEYS
from .calibration import SoftmaxTemperature, TemperatureScaling
from .checkpoint import save_checkpoint
from .decision import DecisionLayer
from .fusion import BayesianFusion, label_priors
from .hierarchy import AttributeClusters
from .data import EvalPreset, TrainPreset, preprocess_config
from .features import state_checksum, trunk_features
from .labels import LabelTable, read_labels
from .losses import class_weights, masked_bce
from .metrics import attribute_metrics, expected_calibration_error, summarize
from .models import ModelConfig, build_model

__all__ = ["TrainConfig", "load_config", "train", "fit_heads"]

logger = logging.getLogger(__name__)

NF = OUTPUT_KEYS.index("not_footwear")


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
    ema: float = 0.0  # heads on cached features: decay of the weight average (0 = off)
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
    cfg = TrainConfig(**raw, model=ModelConfig(**model_raw))
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {cfg.optimizer!r}")
    return cfg


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def sample_weights(table: LabelTable, cfg: TrainConfig) -> np.ndarray:
    w = np.ones(len(table), dtype=np.float32)
    for source, factor in cfg.source_weights.items():
        w[table.source == source] = factor
    return w


def predict_outputs(heads: torch.nn.Module, x: np.ndarray, batch: int = 4096) -> dict[str, np.ndarray]:
    """All head outputs (logits, gate, suitability) for cached features, batched."""
    heads.eval()
    outs: dict[str, list] = {}
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            for k, v in heads(torch.from_numpy(x[i:i + batch])).items():
                outs.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def predict_logits(heads: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return predict_outputs(heads, x)["logits"]


def val_score(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean balanced accuracy; on tiny validation sets (no attribute with 10 of each class) the
    mean over attributes with both classes, then the mean accuracy."""
    per = attribute_metrics(expit(logits), y)
    score = summarize(per)["mean_balanced_accuracy"]
    if np.isnan(score):
        both = [m["balanced_accuracy"] for m in per.values() if m["n_pos"] and m["n_neg"]]
        score = float(np.mean(both)) if both else summarize(per)["mean_accuracy"]
    return float(np.nan_to_num(score, nan=0.0))


def fit_heads(heads: torch.nn.Module, x: np.ndarray, y: np.ndarray, w: np.ndarray,
              x_val: np.ndarray, y_val: np.ndarray, cfg: TrainConfig, *,
              gate_targets: np.ndarray | None = None, suit_targets: np.ndarray | None = None) -> dict:
    """Train the heads on cached features with early stopping on validation balanced accuracy.

    Args:
        x, y, w: (N, D) features, (N, 14) labels (0.5 masked), (N,) sample weights.
        gate_targets: (N,) cluster index per row, -1 where unknown.
        suit_targets: (N, 14) 1 where the photo was judged for the output, 0 where it was
            unsuitable, 0.5 where not known (class-labelled rows).

    Returns:
        A history dict (epochs run, best epoch, best validation score, seconds).
    """
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    heads.mu.copy_(torch.from_numpy(x.mean(0)))
    heads.sigma.copy_(torch.from_numpy(x.std(0) + 1e-3))
    cw = torch.from_numpy(class_weights(y, cfg.balance))
    opt = make_optimizer([p for p in heads.parameters() if p.requires_grad], cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)
    gt = torch.from_numpy(gate_targets) if gate_targets is not None else None
    st = torch.from_numpy(suit_targets) if suit_targets is not None else None
    # Evaluate and keep an exponential moving average of the weights: on frozen features the
    # validation score of the raw weights jumps from epoch to epoch.
    ema = torch.optim.swa_utils.AveragedModel(heads, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema),
                                              use_buffers=True) if cfg.ema else None
    best, best_state, best_epoch, bad = -1.0, None, -1, 0
    for epoch in range(cfg.epochs):
        heads.train()
        for idx in torch.randperm(len(xt)).split(cfg.batch_size):
            out = heads(xt[idx])
            yb = yt[idx]
            loss = masked_bce(out["logits"], yb, cw, wt[idx])
            if gt is not None and "gate" in out:
                g = gt[idx]
                if (g >= 0).any():
                    loss = loss + 0.5 * torch.nn.functional.cross_entropy(out["gate"][g >= 0], g[g >= 0])
            if st is not None and "suitability" in out:
                loss = loss + 0.5 * masked_bce(out["suitability"], st[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(heads)
        sched.step()
        current = ema.module if ema is not None else heads
        score = val_score(predict_logits(current, x_val), y_val)
        logger.info("epoch %d val mean balanced accuracy %.4f", epoch, score)
        if score > best:
            best, best_state, best_epoch, bad = score, copy.deepcopy(current.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    heads.load_state_dict(best_state)
    return {"epochs_run": epoch + 1, "best_epoch": best_epoch, "val_mean_balanced_accuracy": best,
            "seconds": round(time.time() - t0, 1)}


def data_summary(table: LabelTable) -> dict:
    out = {"photos": int(len(table)), "items": int(len(set(table.item)))}
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
            decision.thresholds = tune_thresholds(decision.photo_probs(logits_val), splits["val"].y)
        probs_test = decision.photo_probs(logits_test) if logits_test is not None else None
    else:
        model, history, probs_test, decision, trunk_info = _train_frozen(cfg, table)
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


def tune_thresholds(probs: np.ndarray, y: np.ndarray, min_per_class: int = 10) -> np.ndarray:
    """(K,) decision thresholds chosen on validation: per output, the one maximising accuracy plus
    balanced accuracy (the two figures the evaluation reports); 0.5 where validation has fewer
    than ``min_per_class`` labels of a class."""
    thr = np.full(y.shape[1], 0.5)
    grid = np.linspace(0.02, 0.98, 49)
    for k in range(y.shape[1]):
        known = y[:, k] != MASK
        t, p = y[known, k] == 1, probs[known, k]
        if t.sum() < min_per_class or (~t).sum() < min_per_class:
            continue
        pred = p[None, :] >= grid[:, None]  # (G, n)
        rec_pos, rec_neg = pred[:, t].mean(1), (~pred[:, ~t]).mean(1)
        acc = (pred == t[None]).mean(1)
        thr[k] = grid[int(np.argmax(acc + (rec_pos + rec_neg) / 2))]
    return thr


PULLS = (0.0, 0.25, 0.5, 0.75)


def choose_pull(decision: DecisionLayer, out_val: dict[str, np.ndarray], y_val: np.ndarray) -> float:
    """How far the cluster posterior pulls the attributes fixed in a cluster: the value of
    ``PULLS`` whose validation accuracy plus balanced accuracy (thresholds tuned for it) is best."""
    def score(pull: float) -> float:
        decision.clusters.pull = pull
        probs = decision.photo_probs(out_val["logits"], out_val["gate"])
        s = summarize(attribute_metrics(probs, y_val, thresholds=tune_thresholds(probs, y_val)))
        return s["mean_accuracy"] + s["mean_balanced_accuracy"]

    decision.clusters.pull = max(PULLS, key=score)
    return decision.clusters.pull


def suitability_targets(table: LabelTable) -> np.ndarray:
    """(N, 14): 1 judged, 0 photo unsuitable, 0.5 unknown. Only by-eye rows (and not-footwear
    photos, unsuitable for every attribute) say which photos were unsuitable."""
    known = (table.origin == "eye") | (table.y[:, NF] == 1)
    s = np.where(known[:, None], (table.y != MASK).astype(np.float32), MASK).astype(np.float32)
    s[:, NF] = 1.0
    return s


def gate_targets(clusters: AttributeClusters, y: np.ndarray, min_known: int = 7) -> np.ndarray:
    """Cluster index per row; -1 for rows too sparsely labelled to place (except not footwear)."""
    g = clusters.assign(y)
    sparse = ((y != MASK).sum(1) < min_known) & (y[:, NF] != 1)
    return np.where(sparse, -1, g).astype(np.int64)


def effective_prior(y: np.ndarray, balance: float) -> np.ndarray:
    """The class prior the reweighted heads were effectively trained under (0.5 at balance 1)."""
    pi = label_priors(y)
    w = class_weights(y, balance)
    return np.clip(pi * w[1] / (pi * w[1] + (1 - pi) * w[0]), 0.01, 0.99)


FUSION_VIEWS = 3  # simulated photos per validation item for fitting the fusion's correlation


def _train_frozen(cfg: TrainConfig, table: LabelTable):
    """Frozen trunk: cached features, heads + gate + suitability, then the decision layer on val."""
    tr, va = table.subset(table.split == "train"), table.subset(table.split == "val")
    clusters = AttributeClusters(max_varying=3).fit(tr.y)
    cfg.model.n_clusters, cfg.model.suitability = len(clusters.clusters_), True
    model = build_model(cfg.model, weights=cfg.trunk_weights)
    sha = state_checksum(model.trunk)
    kw = dict(trunk_sha=sha, progress=cfg.progress, num_workers=cfg.num_workers)
    every = trunk_features(model.trunk, table, EvalPreset(cfg.model.backbone), cfg.cache_dir, **kw)
    feats = {s: every[table.split == s] for s in ("train", "val", "test") if (table.split == s).any()}
    views = [feats["train"]] + [
        trunk_features(model.trunk, tr, TrainPreset(cfg.model.backbone, seed=v), cfg.cache_dir, view=f"aug{v}", **kw)
        for v in range(1, cfg.aug_views + 1)]
    reps = len(views)
    history = fit_heads(model.heads, np.concatenate(views), np.tile(tr.y, (reps, 1)),
                        np.tile(sample_weights(tr, cfg), reps), feats["val"], va.y, cfg,
                        gate_targets=np.tile(gate_targets(clusters, tr.y), reps),
                        suit_targets=np.tile(suitability_targets(tr), (reps, 1)))
    out_val = predict_outputs(model.heads, feats["val"])
    decision = DecisionLayer(TemperatureScaling().fit(out_val["logits"], va.y), clusters,
                             SoftmaxTemperature().fit(out_val["gate"], gate_targets(clusters, va.y)))
    choose_pull(decision, out_val, va.y)
    decision.thresholds = tune_thresholds(decision.photo_probs(out_val["logits"], out_val["gate"]), va.y)
    # Simulated multi-photo validation items (augmented views of one photo) fit the fusion.
    val_views = [predict_outputs(model.heads, trunk_features(
        model.trunk, va, TrainPreset(cfg.model.backbone, seed=100 + v), cfg.cache_dir, view=f"valaug{v}", **kw))
        for v in range(FUSION_VIEWS)]
    vp = np.stack([decision.photo_probs(o["logits"], o["gate"]) for o in val_views], 1)  # (N, M, 14)
    vw = np.stack([decision.weights(expit(o["suitability"])) for o in val_views], 1)
    decision.fusion = BayesianFusion(priors=effective_prior(tr.y, cfg.balance)).fit(vp, va.y, vw)
    probs_test = None
    if "test" in feats:
        out_test = predict_outputs(model.heads, feats["test"])
        probs_test = decision.photo_probs(out_test["logits"], out_test["gate"])
    return model, history, probs_test, decision, {"sha256": sha, "weights": cfg.trunk_weights}


def _plain(obj):
    return yaml.safe_load(yaml.safe_dump(obj)) if obj is not None else None
