"""Training ensembles of fine-tuned models (the network itself is ``models.EnsembleNet``).

Members are model folders written by ``shoeclass train`` with the same backbone and the same
``tuned_blocks`` (they differ in seed and fine-tuning resolution). The averaged outputs (head,
gate and suitability logits, over members and mirror views) go through one decision layer,
fitted here on validation for the ensemble.

Averaging members and mirror views separates present from absent better than any one model: the
measured trade-off between mean accuracy and balanced accuracy is in BENCHMARKS.md.

Under torchrun the members train one after another, each on all ranks (``run.train``); the
ensemble's outputs are computed per shard of photos and gathered, and rank 0 writes the folder.
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

from .. import distributed
from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..data import EvalPreset, preprocess_config, table_outputs
from ..hierarchy import AttributeClusters
from ..labels import LabelTable, read_labels
from ..metrics import evaluate_probs, expected_calibration_error, json_safe
from ..models import EnsembleNet
from ..runtime import autocast, prepare_for_inference
from .augment import TrainPreset
from .config import load_config
from .frozen import FUSION_VIEWS, fit_decision
from .run import data_summary, finish_folder, train

__all__ = ["build_ensemble", "fit_ensemble", "ensemble_outputs", "train_ensemble", "is_ensemble_config"]

logger = logging.getLogger(__name__)


def _outputs(net: torch.nn.Module, table: LabelTable, preset: EvalPreset, progress: bool) -> dict[str, np.ndarray]:
    """Every output of ``net`` for every photo of ``table``, as inference computes it (bf16 where
    native). Under torchrun each rank computes photos r, r+N, … and every rank gets all rows."""
    def run(x: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode(), autocast(None):
            return {k: v.float().numpy() for k, v in net(x.contiguous(memory_format=torch.channels_last)).items()}

    if 0 < len(table) < distributed.world_size():  # a rank without photos would not know the outputs to gather
        raise ValueError(f"{len(table)} photos cannot be shared by {distributed.world_size()} processes")
    part = table.subset(np.arange(distributed.rank(), len(table), distributed.world_size()))
    out = table_outputs(run, part, preset, batch_size=32, progress=progress and distributed.is_main())
    return {k: distributed.gather_rows(v, len(table)) for k, v in sorted(out.items())}


def build_ensemble(members: list[str | Path], out: str | Path, data: str | Path, flip: bool = True,
                   progress: bool = True) -> Path:
    """Combine trained model folders into one ensemble model folder, its decision layer fitted on
    the validation split of ``data`` and its metrics measured on the test split.

    Raises:
        CheckpointError: members that cannot be combined (other backbones, tuned blocks, trunk
            weights or attribute clusters), naming the folders.
    """
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
    training = {"ensemble_of": [{"path": str(p), "sha256": m["sha256"], "config": m["training"]["config"],
                                 "wall_seconds": m["training"]["history"].get("wall_seconds")}
                                for p, (_, m) in zip(members, loaded)],
                "history": {"wall_seconds": round(sum(m["training"]["history"].get("wall_seconds") or 0
                                                      for _, m in loaded), 1)}}
    return fit_ensemble(net, first, training, data, out, progress=progress)


def ensemble_outputs(net: EnsembleNet, table: LabelTable, backbone: str, progress: bool = True,
                     view_rows: np.ndarray | None = None, test: bool = True) -> dict:
    """What the decision layer is fitted and measured on: the ensemble's outputs for the validation
    photos (``val``), for ``FUSION_VIEWS`` augmented views of them (``val_views``; of the
    validation rows ``view_rows`` only, when given: simulated items cost a pass each) and for the
    test photos (``test``, when the table has a test split and ``test`` is set)."""
    va, te = (table.subset(table.split == s) for s in ("val", "test"))
    vv = va if view_rows is None else va.subset(np.isin(np.arange(len(va)), view_rows))
    out = {"val": _outputs(net, va, EvalPreset(backbone), progress),
           "val_views": [_outputs(net, vv, TrainPreset(backbone, seed=100 + v), progress) for v in range(FUSION_VIEWS)]}
    if view_rows is not None:
        out["view_rows"] = np.asarray(view_rows)
    if len(te) and test:
        out["test"] = _outputs(net, te, EvalPreset(backbone), progress)
    return out


def fit_ensemble(net: EnsembleNet, first: dict, training: dict, data: str | Path, out: str | Path,
                 outputs: dict | None = None, progress: bool = True) -> Path:
    """Fit one decision layer for ``net`` on the validation split of ``data``, measure it on the
    test split and write the ensemble model folder.

    Args:
        net: the ensemble. first: the model card of its first member (backbone, trunk, clusters,
            training balance). training: what the card's ``training`` section records.
        outputs: :func:`ensemble_outputs` already computed for this net and data (else computed).
    """
    t0 = time.time()
    table = read_labels(data, require_splits=("train", "val"))
    tr, va, te = (table.subset(table.split == s) for s in ("train", "val", "test"))
    backbone = first["backbone"]
    outputs = outputs or ensemble_outputs(net, table, backbone, progress)
    clusters = AttributeClusters.from_dict(first["decision"]["clusters"])  # the same in every member
    decision = fit_decision(outputs["val"], outputs["val_views"], va.y, tr.y,
                            first["training"]["config"]["balance"], clusters, outputs.get("view_rows"))
    metrics = {}
    if "test" in outputs:
        probs = decision.photo_probs(outputs["test"]["logits"], outputs["test"]["gate"])
        metrics = evaluate_probs(probs, te, decision.thresholds)
        metrics["ece"] = expected_calibration_error(probs, te.y)
    history = dict(training.get("history", {}))
    history["ensemble_seconds"] = round(time.time() - t0, 1)
    history["wall_seconds"] = round((history.get("wall_seconds") or 0) + history["ensemble_seconds"], 1)
    meta = {"backbone": backbone, "trunk": first["trunk"], "preprocessing": preprocess_config(backbone),
            "decision": decision.to_dict(),
            "training": {**training, "history": history, "data": data_summary(table)},
            "metrics": {"test": json_safe(metrics)}}
    folder = Path(out)
    if distributed.is_main():  # every rank fitted the same decision layer; one writes the folder
        save_checkpoint(net, folder, meta)
        finish_folder(folder)
    distributed.barrier()
    return folder


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
    if distributed.is_main():
        (folder / "config.yaml").write_text(yaml.safe_dump({**raw, "out": str(out), "overrides": overrides},
                                                           sort_keys=False))
        finish_folder(folder)
    distributed.barrier()
    return folder
