"""Ensembles of fine-tuned models: one frozen stem, several tuned tails, the photo and its mirror.

Members are model folders written by ``shoeclass train`` with the same backbone and the same
``tuned_blocks`` (they differ in seed and fine-tuning resolution). Their frozen stems are the same
ImageNet blocks, so the stem runs once per photo; each member's tail and heads run on its map, on
the photo and on its mirror image. The outputs (head, gate and suitability logits) are averaged and
one decision layer, fitted on validation for the ensemble, turns them into probabilities.

Averaging members and mirror views separates present from absent better than any one model: the
measured trade-off between mean accuracy and balanced accuracy is in BENCHMARKS.md.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import EvalPreset, TrainPreset, preprocess_config, table_outputs
from .hierarchy import AttributeClusters
from .labels import LabelTable, read_labels
from .metrics import expected_calibration_error
from .models import ShoeNet
from .runtime import autocast, prepare_for_inference

__all__ = ["EnsembleNet", "build_ensemble", "train_ensemble", "is_ensemble_config"]

logger = logging.getLogger(__name__)


class EnsembleNet(torch.nn.Module):
    """Members sharing a frozen stem: photos -> the dict of logits averaged over members and views.

    Args:
        members: fine-tuned :class:`ShoeNet` s of one backbone and one ``tuned_blocks``.
        flip: also run the mirrored photo (a shoe seen from its other side is the same shoe).

    Raises:
        ValueError: no members, members of other backbones or tuned blocks, or a frozen trunk.
    """

    def __init__(self, members: list[ShoeNet], flip: bool = True) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        kinds = {(m.cfg.backbone, m.cfg.tuned_blocks) for m in members}
        if len(kinds) > 1 or not members[0].cfg.tuned_blocks:
            raise ValueError(f"ensemble members must share one backbone and one tuned_blocks > 0 (the "
                             f"stem they share); got (backbone, tuned_blocks) = {sorted(kinds)}")
        self.members, self.flip = torch.nn.ModuleList(members), flip
        self.cfg = members[0].cfg

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(x)
        if self.flip:
            x = torch.cat([x, x.flip(3)])  # (2B, 3, H, W): photos, then their mirror images
        s = self.members[0].trunk.stem(x)  # shared frozen stem
        outs = [m.heads(m.trunk.tail(s)) for m in self.members]
        avg = {k: torch.stack([o[k] for o in outs]).mean(0) for k in outs[0]}  # (2B, K) each
        return {k: v.view(-1, n, v.shape[1]).mean(0) for k, v in avg.items()}  # (B, K)


def _outputs(net: torch.nn.Module, table: LabelTable, preset: EvalPreset, progress: bool) -> dict[str, np.ndarray]:
    """Every output of ``net`` for every photo of ``table``, as inference computes it (bf16 where native)."""
    def run(x: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode(), autocast(None):
            return {k: v.float().numpy() for k, v in net(x.contiguous(memory_format=torch.channels_last)).items()}

    return table_outputs(run, table, preset, batch_size=32, progress=progress)


def build_ensemble(members: list[str | Path], out: str | Path, data: str | Path, flip: bool = True,
                   progress: bool = True) -> Path:
    """Combine trained model folders into one ensemble model folder, its decision layer fitted on
    the validation split of ``data`` and its metrics measured on the test split.

    Raises:
        CheckpointError: members that cannot be combined (other backbones, tuned blocks, trunk
            weights or attribute clusters), naming the folders.
    """
    from .train import data_summary, evaluate_probs
    from .train_frozen import FUSION_VIEWS, fit_decision

    t0 = time.time()
    loaded = [load_checkpoint(m) for m in members]
    first = loaded[0][1]
    for path, (_, meta) in zip(members, loaded):
        same = (meta["trunk"].get("sha256") == first["trunk"].get("sha256")
                and _clusters(meta) == _clusters(first) and meta["backbone"] == first["backbone"])
        if not same:
            raise CheckpointError(f"{path}: cannot join an ensemble with {members[0]}: other backbone, "
                                  "ImageNet trunk or attribute clusters. Train every member on the same "
                                  "data with the same backbone.")
    try:
        net = prepare_for_inference(EnsembleNet([m for m, _ in loaded], flip))
    except ValueError as exc:
        raise CheckpointError(f"{[str(m) for m in members]}: {exc}") from exc
    table = read_labels(data, require_splits=("train", "val"))
    tr, va, te = (table.subset(table.split == s) for s in ("train", "val", "test"))
    backbone = first["backbone"]
    out_val = _outputs(net, va, EvalPreset(backbone), progress)
    val_views = [_outputs(net, va, TrainPreset(backbone, seed=100 + v), progress) for v in range(FUSION_VIEWS)]
    clusters = AttributeClusters.from_dict(first["decision"]["clusters"])  # the same in every member
    decision = fit_decision(out_val, val_views, va.y, tr.y, first["training"]["config"]["balance"], clusters)
    metrics = {}
    if len(te):
        out_test = _outputs(net, te, EvalPreset(backbone), progress)
        probs = decision.photo_probs(out_test["logits"], out_test["gate"])
        metrics = evaluate_probs(probs, te, decision.thresholds)
        metrics["ece"] = expected_calibration_error(probs, te.y)
    meta = {"backbone": backbone, "trunk": first["trunk"], "preprocessing": preprocess_config(backbone),
            "decision": decision.to_dict(),
            "training": {"ensemble_of": [{"path": str(p), "sha256": m["sha256"], "config": m["training"]["config"],
                                          "wall_seconds": m["training"]["history"].get("wall_seconds")}
                                         for p, (_, m) in zip(members, loaded)],
                         "history": {"wall_seconds": round(sum(m["training"]["history"].get("wall_seconds") or 0
                                                               for _, m in loaded) + time.time() - t0, 1),
                                     "ensemble_seconds": round(time.time() - t0, 1)},
                         "data": data_summary(table)},
            "metrics": {"test": metrics}}
    return save_checkpoint(net, out, meta)


_RUN_ONLY = ("out", "progress", "num_workers", "cache_dir")  # settings that do not change the model


def _check_member(folder: Path, cfg) -> None:
    """A member folder already written must come from the settings the config asks for."""
    wanted = yaml.safe_load(yaml.safe_dump(asdict(cfg)))
    defaults = yaml.safe_load(yaml.safe_dump(asdict(type(cfg)())))  # settings added since it was trained
    saved = {**defaults, **json.loads((folder / "model.json").read_text())["training"]["config"]}
    for c in (saved, wanted):  # set by training from the data, not by the config
        c["model"] = {k: v for k, v in c["model"].items() if k not in ("n_clusters", "suitability")}
    diff = sorted(k for k in set(saved) | set(wanted) if k not in _RUN_ONLY and saved.get(k) != wanted.get(k))
    if diff:
        raise ValueError(f"{folder}: holds a member trained with other settings ({', '.join(diff)}); "
                         "delete the folder to train it again")


def _clusters(meta: dict) -> dict:
    """A member's attribute clusters without the pull (refitted for the ensemble)."""
    c = dict(meta["decision"].get("clusters") or {})
    c["params"] = {k: v for k, v in c.get("params", {}).items() if k != "pull"}
    return c


def is_ensemble_config(path: str | Path) -> bool:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return isinstance(raw, dict) and "members" in raw


def train_ensemble(path: str | Path, overrides: dict | None = None) -> Path:
    """Train the members an ensemble config lists (each: the ``base`` config plus its own settings,
    written to ``<out>/members/<i>``; a member already written is kept), then combine them.

    The config holds ``base`` (a training config, relative to this file), ``out``, ``flip`` and
    ``members`` (a list of settings such as ``{seed: 1, tune_size: 176}``); ``overrides`` (such as
    ``data``, ``out`` or ``progress``) apply to every member and to the ensemble.

    Raises:
        ValueError: a config without members or base, or unknown ensemble keys.
    """
    from .train import load_config, train

    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {"base", "out", "flip", "members"}
    if unknown or not raw.get("members") or not raw.get("base"):
        raise ValueError(f"{path}: an ensemble config holds 'base', 'out', 'flip' and a non-empty "
                         f"'members' list; unknown keys {sorted(unknown)}")
    overrides = dict(overrides or {})
    out = Path(overrides.pop("out", raw.get("out", "runs/ensemble")))
    folders = []
    for i, settings in enumerate(raw["members"]):
        folder = out / "members" / str(i)
        cfg = load_config(path.parent / raw["base"], {**(settings or {}), **overrides, "out": str(folder)})
        if (folder / "model.json").is_file():
            _check_member(folder, cfg)
        else:
            logger.info("training ensemble member %d of %d: %s", i + 1, len(raw["members"]), settings)
            train(cfg)
        folders.append(folder)
    cfg = load_config(path.parent / raw["base"], overrides)
    folder = build_ensemble(folders, out, cfg.data, flip=bool(raw.get("flip", True)), progress=cfg.progress)
    (folder / "config.yaml").write_text(yaml.safe_dump({**raw, "out": str(out), "overrides": overrides}, sort_keys=False))
    return folder
