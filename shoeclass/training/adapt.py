"""Adapting a trained ensemble to photos in the wild: shoes on feet and in the street.

A model fine-tuned on catalogue photos learns shortcuts of the setting: every in-the-wild photo it
saw (`worn`) was a man's flat shoe, so "on a foot" came to mean "flat" and stilettos in the street
read as low shoes. Adaptation continues each member's fine-tuning (its tuned tail and heads,
from where the shipped model left them) on

- the in-the-wild photos labelled by eye (`street`, `worn`) with a larger sample weight
  (``source_weights``, chosen on validation per kind of photo);
- catalogue photos made street-like on the fly (``wild_aug``: :func:`augment.wild_views` pastes the
  cut-out shoe on scenes from the in-the-wild photos, adds legs and trouser-like occluders, blur
  and downscaling); a view whose shaft top is hidden has its height labels masked and teaches the
  suitability heads that such a photo cannot show the height;

then one decision layer is fitted on validation for the adapted ensemble (``ensemble.fit_ensemble``).
Continuing from the trained members (rather than from ImageNet) keeps what they learnt from the
catalogue photos and costs a few epochs instead of a whole training.
"""
from __future__ import annotations

import dataclasses
import logging
import time

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..data import EvalPreset
from ..hierarchy import AttributeClusters
from ..labels import CATALOGUE_SOURCES, WILD_SOURCES, LabelTable, photo_kinds
from ..metrics import val_score
from ..models import EnsembleNet
from ..runtime import default_device
from .config import TrainConfig, sample_weights
from .finetune import TUNE_STATE, pixel_features, tune_trunk
from .frozen import gate_targets, heads_loss, suitability_targets

__all__ = ["kind_scores", "adapt_members", "load_member_tensors"]

logger = logging.getLogger(__name__)

def kind_scores(logits: np.ndarray, table: LabelTable) -> dict[str, float]:
    """Validation score (mean balanced accuracy at p = 0.5, ``train.val_score``) of every kind of
    photo present, and of all photos."""
    out = {"all": val_score(logits, table.y)}
    for kind, sel in photo_kinds(table).items():
        if sel.sum() >= 20:
            out[kind] = val_score(logits[sel], table.y[sel])
    return {k: round(v, 4) for k, v in out.items()}


def adapt_members(net: EnsembleNet, train: LabelTable, val: LabelTable, pixels_train, pixels_val,
                  cfg: TrainConfig, member_settings: list[dict], clusters: AttributeClusters,
                  device: torch.device | str | None = None) -> list[dict]:
    """Continue fine-tuning every member of ``net`` in place on the adaptation recipe of ``cfg``.

    Args:
        net: the trained ensemble (its members' tails and heads are retrained).
        train, val: the training and validation photos; pixels_train, pixels_val: their
            (N, 224, 224, 3) uint8 preprocessed pixels (arrays, or tensors already on ``device``).
        cfg: the recipe: ``source_weights``, ``origin_weights``, ``wild_aug``, ``tune_*`` settings.
        member_settings: per member, the settings it was trained with (``seed``, ``tune_size``).
        clusters: the attribute clusters the members' gates predict.
        device: where to train (default: CUDA when present, else the CPU).

    Each member keeps the epoch (the starting point included) with the best mean of its
    validation scores over the kinds of photo, so the few street photos weigh as much as the many
    catalogue ones.

    Returns:
        Per member, its tuning history and its validation scores per kind of photo.
    """
    preset = EvalPreset(net.cfg.backbone)
    mean, std = preset.stats()
    targets = dict(gate=gate_targets(clusters, train.y), suit=suitability_targets(train))
    wild = np.isin(train.source, CATALOGUE_SOURCES)
    backgrounds = pixels_train[np.flatnonzero(np.isin(train.source, WILD_SOURCES))]
    dev = torch.device(device) if device is not None else default_device()

    def score(logits: np.ndarray, y: np.ndarray) -> float:  # as good as its worst kinds: kinds weigh alike
        by_kind = kind_scores(logits, val)
        return float(np.mean([v for k, v in by_kind.items() if k != "all"]))

    reports = []
    for i, member in enumerate(net.members):
        t0 = time.time()
        mcfg = dataclasses.replace(cfg, **(member_settings[i] if i < len(member_settings) else {}),
                                   out=str(Path(cfg.out) / f"member{i}"))  # its own resume state
        history = tune_trunk(member.trunk, member.heads, pixels_train, train.y, sample_weights(train, mcfg),
                             pixels_val, val.y, mcfg, mean=mean, std=std, **targets, loss_fn=heads_loss,
                             score_fn=score, wild=wild, backgrounds=backgrounds, device=dev)
        member.trunk.to(dev)
        with torch.inference_mode():
            feats = torch.from_numpy(pixel_features(member.trunk, pixels_val, mean, std))
            logits = member.heads.cpu()(feats)["logits"].numpy()
        member.trunk.cpu()
        (Path(mcfg.out) / TUNE_STATE).unlink(missing_ok=True)  # the member's result is in ``net`` now
        history["val_by_kind"] = kind_scores(logits, val)
        history["seconds"] = round(time.time() - t0, 1)
        logger.info("member %d adapted: %s", i, history["val_by_kind"])
        reports.append(history)
    return reports


def load_member_tensors(net: EnsembleNet, files: list[str | Path]) -> None:
    """Put adapted members' tensors (each member's tuned tail and heads, as saved per member by
    ``scripts/device_adapt.py``) into ``net``, in place.

    Raises:
        ValueError: a file per member is missing, or its tensors do not fit the member.
    """
    if len(files) != len(net.members):
        raise ValueError(f"{len(files)} member files for {len(net.members)} members")
    for member, path in zip(net.members, files):
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        member.heads.load_state_dict({k.removeprefix("heads."): v for k, v in state.items() if k.startswith("heads.")})
        tuned = {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")}
        if set(tuned) != set(member.trunk.tuned_state()):
            raise ValueError(f"{path}: holds {len(tuned)} trunk tensors, the member tunes "
                             f"{len(member.trunk.tuned_state())}")
        member.trunk.load_state_dict(tuned, strict=False)
