"""Training on a frozen trunk: cached features -> 14 heads + cluster gate + suitability heads ->
the decision layer fitted on validation (calibration, cluster pull, thresholds, fusion).

The paper's transfer recipe (section 2): the ImageNet trunk runs once per photo and view, its
features are cached (``features.py``), and the heads train on them in seconds. With
``model.tuned_blocks`` the last trunk blocks are then retrained with the heads (``finetune.py``).
"""
from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
from scipy.special import expit

from .. import distributed
from ..attributes import MASK, OUTPUT_KEYS
from ..calibration import SoftmaxTemperature, TemperatureScaling
from ..data import EvalPreset
from ..decision import DecisionLayer, effective_prior, prior_thresholds, tune_thresholds
from ..fusion import BayesianFusion
from ..hierarchy import AttributeClusters
from ..labels import LabelTable, class_weights
from ..metrics import attribute_metrics, summarize, val_score
from ..models import build_model, state_checksum
from ..runtime import autocast, batched
from .augment import TrainPreset
from .config import TrainConfig, make_optimizer, sample_weights
from .features import trunk_features
from .finetune import pixel_features, tune_trunk
from .losses import masked_bce
from .pixels import pixel_cache

__all__ = ["train_frozen", "fit_heads", "fit_decision", "heads_loss", "predict_outputs", "gate_targets", "suitability_targets"]

logger = logging.getLogger(__name__)

NF = OUTPUT_KEYS.index("not_footwear")


def predict_outputs(heads: torch.nn.Module, x: np.ndarray, batch: int = 4096) -> dict[str, np.ndarray]:
    """All head outputs (logits, gate, suitability) for cached features, batched."""
    heads.eval()
    dev = next(heads.parameters()).device
    return batched(lambda b: {k: v.cpu().numpy() for k, v in heads(torch.from_numpy(b).to(dev)).items()}, x, batch)


def predict_logits(heads: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return predict_outputs(heads, x)["logits"]


def heads_loss(out: dict[str, torch.Tensor], y: torch.Tensor, cw: torch.Tensor, w: torch.Tensor,
               gate: torch.Tensor | None = None, suit: torch.Tensor | None = None) -> torch.Tensor:
    """The heads' training loss on one batch: masked class-weighted BCE of the 14 outputs, plus
    half the cluster gate's cross-entropy (rows with a known cluster) and half the suitability BCE.

    Under torch.distributed each term is divided by its count over the whole global batch (all
    ranks) times the world size, so DDP's gradient average equals one process's gradient of the
    global batch, however the masked labels fall across ranks."""
    has_gate = gate is not None and "gate" in out
    has_suit = suit is not None and "suitability" in out
    counts = torch.stack([(y != MASK).sum(), (gate >= 0).sum() if has_gate else torch.tensor(0),
                          (suit != MASK).sum() if has_suit else torch.tensor(0)]).float()
    den = (distributed.all_sum(counts) / distributed.world_size()).clamp(min=1)  # (3,)
    loss = masked_bce(out["logits"], y, cw, w, denominator=den[0])
    if has_gate:  # a batch without known clusters adds 0 (and zero gradients, as DDP needs)
        known = gate >= 0
        loss = loss + 0.5 * torch.nn.functional.cross_entropy(out["gate"][known], gate[known], reduction="sum") / den[1]
    if has_suit:
        loss = loss + 0.5 * masked_bce(out["suitability"], suit, denominator=den[2])
    return loss


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
    sigma, mu = torch.std_mean(torch.from_numpy(x).float(), 0, correction=0)  # numpy's std(0), on every core
    heads.mu.copy_(mu)
    heads.sigma.copy_(sigma + 1e-3)
    dev = distributed.device()  # NCCL reduces GPU tensors only: under torchrun on GPUs the heads go there
    heads.to(dev)
    cw = torch.from_numpy(class_weights(y, cfg.balance)).to(dev)
    opt = make_optimizer([p for p in heads.parameters() if p.requires_grad], cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    xt, yt, wt = (torch.from_numpy(a).to(dev) for a in (x, y, w))
    gt = torch.from_numpy(gate_targets).to(dev) if gate_targets is not None else None
    st = torch.from_numpy(suit_targets).to(dev) if suit_targets is not None else None
    sampler, local = _row_sampler(len(xt), cfg)
    # Under torchrun every rank holds all cached features and takes its share of each global
    # batch; DDP averages the gradients, so the heads stay identical on every rank.
    net = torch.nn.parallel.DistributedDataParallel(heads) if distributed.is_distributed() else heads
    # Evaluate and keep an exponential moving average of the weights: on frozen features the
    # validation score of the raw weights jumps from epoch to epoch.
    ema = torch.optim.swa_utils.AveragedModel(heads, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema),
                                              use_buffers=True) if cfg.ema else None
    best, best_state, best_epoch, bad = -1.0, None, -1, 0
    for epoch in range(cfg.epochs):
        heads.train()
        losses = []
        sampler.set_epoch(epoch)
        for idx in torch.tensor(list(sampler), device=dev).split(local):  # this rank's rows of each global batch
            with autocast(cfg.bf16, dev):  # the first layer's matmul, 2/3 of a step in fp32
                out = net(xt[idx])
            loss = heads_loss({k: v.float() for k, v in out.items()}, yt[idx], cw, wt[idx],
                              None if gt is None else gt[idx], None if st is None else st[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if ema is not None:
                ema.update_parameters(heads)
        sched.step()
        current = ema.module if ema is not None else heads
        score = val_score(predict_logits(current, x_val), y_val)
        logger.info("heads epoch %d loss %.4f val mean balanced accuracy %.4f", epoch, np.mean(losses), score)
        if score > best:
            best, best_state, best_epoch, bad = score, copy.deepcopy(current.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    heads.load_state_dict(best_state)
    heads.cpu()
    return {"epochs_run": epoch + 1, "best_epoch": best_epoch, "val_mean_balanced_accuracy": best,
            "seconds": round(time.time() - t0, 1)}


def _row_sampler(n_rows: int, cfg: TrainConfig) -> tuple[torch.utils.data.DistributedSampler, int]:
    """This rank's rows in a fresh random order each epoch (``sampler.set_epoch``), and its batch
    size. With N ranks each takes ``ceil(batch_size / N)`` rows of every global batch of
    ``batch_size``: rank r's batch k holds rows ``k·B + r, k·B + r + N, …`` of the shuffled order, so
    the ranks together see exactly the batches one process sees (when the row count is a multiple
    of N; otherwise the sampler repeats a few rows to even the shards)."""
    n = distributed.world_size()
    sampler = torch.utils.data.DistributedSampler(range(n_rows), num_replicas=n, rank=distributed.rank(),
                                                  shuffle=True, seed=cfg.seed)
    local = -(-cfg.batch_size // n)
    if local * n != cfg.batch_size:
        logger.warning("batch_size %d is not a multiple of %d processes: global batch %d", cfg.batch_size, n, local * n)
    return sampler, local


PULLS = (0.0, 0.25, 0.5, 0.75)


def choose_pull(decision: DecisionLayer, out_val: dict[str, np.ndarray], y_val: np.ndarray,
                fallback: np.ndarray | None = None) -> float:
    """How far the cluster posterior pulls the attributes fixed in a cluster: the value of
    ``PULLS`` whose validation accuracy plus balanced accuracy (thresholds tuned for it) is best."""
    def score(pull: float) -> float:
        decision.clusters.pull = pull
        probs = decision.photo_probs(out_val["logits"], out_val["gate"])
        s = summarize(attribute_metrics(probs, y_val, thresholds=tune_thresholds(probs, y_val, fallback)))
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


FUSION_VIEWS = 3  # simulated photos per validation item for fitting the fusion's correlation


def train_frozen(cfg: TrainConfig, table: LabelTable):
    """Frozen trunk: cached features, heads + gate + suitability, then the decision layer on val.
    With ``model.tuned_blocks`` the trunk's tail is then retrained with the heads (finetune.py)."""
    tr, va = table.subset(table.split == "train"), table.subset(table.split == "val")
    clusters = AttributeClusters(max_varying=3).fit(tr.y)
    cfg.model.n_clusters, cfg.model.suitability = len(clusters.clusters_), True
    model = build_model(cfg.model, weights=cfg.trunk_weights)
    sha = state_checksum(model.trunk)  # of the ImageNet trunk, before any tail retraining
    kw = dict(trunk_sha=sha, progress=cfg.progress, num_workers=cfg.num_workers)
    presets = {"eval": EvalPreset(cfg.model.backbone),
               **{f"aug{v}": TrainPreset(cfg.model.backbone, seed=v) for v in range(1, cfg.aug_views + 1)},
               **{f"valaug{v}": TrainPreset(cfg.model.backbone, seed=100 + v) for v in range(FUSION_VIEWS)}}
    subsets = {"eval": table, **{v: tr for v in presets if v.startswith("aug")},
               **{v: va for v in presets if v.startswith("valaug")}}
    features = lambda v: trunk_features(model.trunk, subsets[v], presets[v], cfg.cache_dir, view=v, **kw)
    train_views = ["eval"] + [v for v in presets if v.startswith("aug")]
    reps = len(train_views)
    targets = dict(gate=gate_targets(clusters, tr.y), suit=suitability_targets(tr))
    frozen = {v: features(v) for v in train_views}
    history = fit_heads(model.heads, np.concatenate([_rows(frozen[v], v, table, "train") for v in train_views]),
                        np.tile(tr.y, (reps, 1)), np.tile(sample_weights(tr, cfg), reps),
                        _rows(frozen["eval"], "eval", table, "val"), va.y, cfg,
                        gate_targets=np.tile(targets["gate"], reps), suit_targets=np.tile(targets["suit"], (reps, 1)))
    if cfg.model.tuned_blocks:
        feats = _tune(cfg, model, table, targets, history)
        kw["trunk_sha"] = None  # later views through the tuned trunk: cached under its own checksum
    else:
        feats = {s: _rows(frozen["eval"], "eval", table, s) for s in ("train", "val", "test") if (table.split == s).any()}
    del frozen
    out_val = predict_outputs(model.heads, feats["val"])
    val_views = [predict_outputs(model.heads, features(f"valaug{v}")) for v in range(FUSION_VIEWS)]
    decision = fit_decision(out_val, val_views, va.y, tr.y, cfg.balance, clusters)
    probs_test = None
    if "test" in feats:
        out_test = predict_outputs(model.heads, feats["test"])
        probs_test = decision.photo_probs(out_test["logits"], out_test["gate"])
    trunk_info = {"sha256": sha, "weights": cfg.trunk_weights, "tuned_blocks": cfg.model.tuned_blocks}
    return model, history, probs_test, decision, trunk_info


def fit_decision(out_val: dict[str, np.ndarray], val_views: list[dict[str, np.ndarray]], y_val: np.ndarray,
                 y_train: np.ndarray, balance: float, clusters: AttributeClusters,
                 view_rows: np.ndarray | None = None) -> DecisionLayer:
    """The decision layer fitted on validation: temperatures of the heads and of the cluster gate,
    the cluster pull, the thresholds, and the fusion fitted on simulated multi-photo items.

    Args:
        out_val: the model's outputs (logits, gate, suitability) for the validation photos.
        val_views: the same for ``FUSION_VIEWS`` augmented views of each validation photo.
        y_val, y_train: (N, 14) labels of the validation and training photos.
        balance: the class reweighting the heads were trained with.
        view_rows: the validation rows ``val_views`` cover (default: all).
    """
    decision = DecisionLayer(TemperatureScaling().fit(out_val["logits"], y_val), clusters,
                             SoftmaxTemperature().fit(out_val["gate"], gate_targets(clusters, y_val)))
    # The prior of the heads' own training (uncapped weights) also after fine-tuning: fitted on one
    # half of the validation views and scored on the other, it fuses with log-loss 0.059 against
    # 0.065 for the prior of the capped fine-tuning loss (and 0.080 for the label frequencies).
    fallback = prior_thresholds(y_train, balance)
    choose_pull(decision, out_val, y_val, fallback)
    decision.thresholds = tune_thresholds(decision.photo_probs(out_val["logits"], out_val["gate"]), y_val, fallback)
    vp = np.stack([decision.photo_probs(o["logits"], o["gate"]) for o in val_views], 1)  # (N, M, 14)
    vw = np.stack([decision.weights(expit(o["suitability"])) for o in val_views], 1)
    y_views = y_val if view_rows is None else y_val[view_rows]
    decision.fusion = BayesianFusion(priors=effective_prior(y_train, balance)).fit(vp, y_views, vw)
    return decision


def _tune(cfg: TrainConfig, model, table: LabelTable, targets: dict, history: dict) -> dict[str, np.ndarray]:
    """Fine-tune the trunk's tail with the heads on augmented photos (finetune.py); returns the
    tuned trunk's features of the validation and test photos (the decision layer's inputs)."""
    preset = EvalPreset(cfg.model.backbone)
    mean, std = preset.stats()
    pix = {s: pixel_cache(table.subset(table.split == s), preset, cfg.cache_dir, cfg.progress, size=224)
           for s in ("train", "val", "test") if (table.split == s).any()}
    tr, va = table.subset(table.split == "train"), table.subset(table.split == "val")
    history["tune"] = tune_trunk(model.trunk, model.heads, pix["train"], tr.y, sample_weights(tr, cfg), pix["val"],
                                 va.y, cfg, mean=mean, std=std, **targets, loss_fn=heads_loss, score_fn=val_score)
    return {s: pixel_features(model.trunk, p, mean, std, progress=cfg.progress) for s, p in pix.items() if s != "train"}


def _rows(x: np.ndarray, view: str, table: LabelTable, split: str) -> np.ndarray:
    """The rows of ``split`` from a view's array (the eval view covers every photo, others one split)."""
    return x[table.split == split] if view == "eval" else x
