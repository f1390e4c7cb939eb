"""Model files: ``model.safetensors`` plus ``model.json`` metadata, loaded safely and offline.

The metadata is the model card: attributes, backbone, trunk weights and their checksum,
preprocessing, calibration, clusters, fusion parameters, training data summary, measured metrics
and the sha256 of the tensor file. The card drives loading: the network is built from its
``model`` (or ``ensemble``) config, the trunk from its ``trunk`` source, photos are normalised with
its ``preprocessing``. So the card is protected like the tensors: ``card_sha256`` covers every
other field, and a schema checks types, lengths and ranges (``_card.py``). Loading refuses a card
of another format version, an edited card (naming the field), a tensor file whose checksum does
not match, a pickle where safetensors is expected, and metadata for a different attribute list.
"""
from __future__ import annotations

import hashlib
import json
import re
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._card import CHECKSUM_FIELD, INT8_FILE, card_checksum, card_problem, changed_fields
from .attributes import OUTPUT_KEYS
from .assets import asset
from .backbones import get_backbone
from .models import (EnsembleNet, MaterialTail, ModelConfig, ShoeNet, build_model, build_trunk, share_stem,
                     state_checksum)

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_metadata", "resolve_path",
           "reseal_card", "file_sha256", "int8_graph", "INT8_FILE", "DEFAULT_MODEL", "FORMAT_VERSION"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the card carries card_sha256 and is checked by a schema
TENSORS, METADATA = "model.safetensors", "model.json"
DEFAULT_MODEL = asset("weights", "default")


class CheckpointError(ValueError):
    """A model file that must not be loaded; the message says why and how to fix it."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_path(path: str | Path | None) -> Path:
    """The model folder for ``path`` (a folder, its model.json or model.safetensors; None = default)."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    if path.is_file():
        path = path.parent
    if not (path / METADATA).is_file():
        raise CheckpointError(f"{path}: no {METADATA} here. A shoeclass model is a folder holding "
                              f"{TENSORS} and {METADATA}, as written by `shoeclass train`.")
    return path


def save_checkpoint(model: torch.nn.Module, folder: str | Path, meta: dict) -> Path:
    """Write the trainable tensors (the heads; the whole net for lenet) and the metadata.

    A frozen ImageNet trunk is not stored: it comes from its installed package or file, and the
    metadata records its checksum so a different trunk is refused at load time. A retrained tail
    (``tuned_blocks``) is stored as ``trunk.*`` tensors. An :class:`~shoeclass.models.EnsembleNet`
    stores each member's tensors under ``members.<i>.`` and its material tail's (its ``stored``
    deltas and own tensors) under ``material_tail.``, in float16 (its bf16 inference rounds them
    further anyway; it keeps three members under the 50 MB the shipped weights may take).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "members"):
        state = {f"members.{i}.{k}": v.half() if v.is_floating_point() else v
                 for i, m in enumerate(model.members) for k, v in _trainable(m).items()}
        ensemble = {"members": [asdict(m.cfg) for m in model.members], "flip": model.flip}
        tail = getattr(model, "material_tail", None)
        if tail is not None:
            state.update({f"material_tail.{k}": v.half() for k, v in tail.stored.items()})
            ensemble["material_tail"] = {"first": tail.first, "rank": tail.rank,
                                         "parts": {p: list(c) for p, c in tail.parts.items()}}
        meta = dict(meta, ensemble=ensemble)
    else:
        state = _trainable(model)
    tmp = folder / (TENSORS + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(folder / TENSORS)
    meta = dict(meta, format_version=FORMAT_VERSION, attributes=list(OUTPUT_KEYS),
                model=asdict(model.cfg), sha256=file_sha256(folder / TENSORS))
    if "preprocessing" not in meta:
        from .data import preprocess_config

        meta["preprocessing"] = preprocess_config(model.cfg.backbone)
    _write_card(folder, meta)  # metadata last: a folder never holds a checksum of other tensors
    return folder


def _write_card(folder: Path, meta: dict) -> None:
    meta = json.loads(json.dumps(meta))  # the values as they will read back (tuples as lists ...)
    meta.pop(CHECKSUM_FIELD, None)
    problem = card_problem(meta)
    if problem:
        raise CheckpointError(f"{folder / METADATA}: field {problem[0]}: {problem[1]}")
    meta[CHECKSUM_FIELD] = card_checksum(meta)
    tmp = folder / (METADATA + ".tmp")
    text = json.dumps(meta, indent=2, ensure_ascii=False)
    tmp.write_text(_NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text))
    tmp.replace(folder / METADATA)


_NUMBER_LIST = re.compile(r"\[\s+([-+0-9.eE,\s]+?)\s+\]")  # a list of numbers: one line in the card


def update_card(path: str | Path, changes: dict) -> Path:
    """Replace top-level sections of a model's card (e.g. a decision layer refitted on other
    photos), validated by the schema and checksummed again; the tensors are untouched.

    Raises:
        CheckpointError: the card as it is fails its checksum, or the new card fails the schema.
    """
    folder = resolve_path(path)
    meta = read_metadata(folder)  # a card already edited by hand is refused, not resealed
    _write_card(folder, {**meta, **changes})
    return folder


def reseal_card(path: str | Path) -> Path:
    """Bring a format-1 card (no ``card_sha256``) to this format, leaving the tensors untouched.

    The card must pass the schema and its ``sha256`` must match the tensor file; only
    ``format_version`` and ``card_sha256`` change. For models trained before the card was
    checksummed (``scripts/reseal_model_card.py``).

    Raises:
        CheckpointError: the card is of another format, fails the schema or the tensor checksum.
    """
    folder = resolve_path(path)
    meta = _parse_card(folder)
    if meta.get("format_version") != 1:
        raise CheckpointError(f"{folder / METADATA}: format_version {meta.get('format_version')!r}; only "
                              "format 1 cards are resealed")
    if file_sha256(folder / TENSORS) != meta.get("sha256"):
        raise CheckpointError(f"{folder / TENSORS}: sha256 does not match {METADATA}; not resealed")
    _write_card(folder, dict(meta, format_version=FORMAT_VERSION))
    return folder


def _trainable(model: ShoeNet) -> dict[str, torch.Tensor]:
    if get_backbone(model.cfg.backbone).kind == "scratch":
        return model.state_dict()
    return {**{f"heads.{k}": v for k, v in model.heads.state_dict().items()},
            **{f"trunk.{k}": v for k, v in model.trunk.tuned_state().items()}}


def _parse_card(folder: Path) -> dict:
    try:
        meta = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{folder / METADATA}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder / METADATA}: a model card is a JSON object, got a {type(meta).__name__}; "
                              "copy the model folder again from its source")
    return meta


def read_metadata(path: str | Path | None = None) -> dict:
    """The metadata of a model folder, checked for format, checksum, schema and attribute list.

    Raises:
        CheckpointError: not a JSON object, another format version, a card changed since it was
            saved, or a field of the wrong type, length or range (the message names the field).
    """
    folder = resolve_path(path)
    card = folder / METADATA
    meta = _parse_card(folder)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        fix = ("it was written by an older shoeclass; reseal it with `python scripts/reseal_model_card.py "
               f"{folder}` or retrain" if version == 1 else
               "it was written by a newer shoeclass; upgrade shoeclass or use a model saved by this version")
        raise CheckpointError(f"{card}: format_version {version!r}, this shoeclass reads format {FORMAT_VERSION}: {fix}")
    if meta.get("attributes") != list(OUTPUT_KEYS):
        raise CheckpointError(
            f"{card}: the model predicts {meta.get('attributes')}, this shoeclass expects "
            f"{list(OUTPUT_KEYS)}; retrain with `shoeclass train` or use a matching shoeclass version")
    changed = changed_fields(meta)
    if changed:
        raise CheckpointError(f"{card}: field {', '.join(changed[:5])} changed after the model was saved "
                              f"({CHECKSUM_FIELD} does not match). A model card is part of the model: copy the "
                              "model folder again from its source, or retrain.")
    problem = card_problem(meta)
    if problem:
        raise CheckpointError(f"{card}: field {problem[0]}: {problem[1]}")
    return meta


def load_checkpoint(path: str | Path | None = None,
                    trunk_weights: str | None = "card") -> tuple[torch.nn.Module, dict]:
    """Load a model folder with no network access.

    Args:
        path: a model folder (None: the shipped default model).
        trunk_weights: where a frozen trunk's ImageNet weights come from (see ``build_trunk``);
            ``"card"``: the source the model card names (``trunk.weights``, default ``imagenet``).

    Raises:
        CheckpointError: checksum mismatch, not a safetensors file, other attribute list,
            or trunk weights that differ from those the heads were trained on.
    """
    folder = resolve_path(path)
    meta = read_metadata(folder)
    if trunk_weights == "card":
        trunk_weights = meta.get("trunk", {}).get("weights", "imagenet")
    tensors = folder / TENSORS
    if not tensors.is_file():
        raise CheckpointError(f"{tensors}: missing; copy the whole model folder")
    if file_sha256(tensors) != meta.get("sha256"):
        raise CheckpointError(f"{tensors}: sha256 does not match {METADATA}; the file is corrupt or was "
                              "replaced. Copy the model folder again from its source.")
    try:
        state = load_file(str(tensors))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{tensors}: not a safetensors file ({exc}). shoeclass never unpickles "
                              "model files; convert with safetensors.torch.save_file.") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        if "ensemble" in meta:
            members = []
            for i, mcfg in enumerate(meta["ensemble"]["members"]):
                prefix = f"members.{i}."
                members.append(_build(ModelConfig(**mcfg), {k.removeprefix(prefix): v for k, v in state.items()
                                                            if k.startswith(prefix)}, trunk_weights, meta, folder,
                                      check_trunk=i == 0))
                if i:
                    share_stem(members[0].trunk, members[i].trunk)
            cfg = members[0].cfg  # the untuned ImageNet tail gives the photo embedding
            reference = build_trunk(cfg.backbone, trunk_weights, cfg.pooling, cfg.tuned_blocks)
            tail, spec = None, meta["ensemble"].get("material_tail")
            if spec:
                tail = MaterialTail(reference, spec["first"], spec["parts"], spec["rank"],
                                    {k.removeprefix("material_tail."): v for k, v in state.items()
                                     if k.startswith("material_tail.")})
            if sum(len(_trainable(m)) for m in members) + len(tail.stored if tail else ()) != len(state):
                raise KeyError(f"{len(state)} tensors for {len(members)} members"
                               f"{' and a material tail' * bool(tail)}")
            return EnsembleNet(members, meta["ensemble"]["flip"], reference, tail).eval(), meta
        return _build(ModelConfig(**meta["model"]), state, trunk_weights, meta, folder).eval(), meta
    except CheckpointError:
        raise
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:  # load_state_dict: missing keys, other shapes
        raise CheckpointError(f"{folder}: the tensors in {TENSORS} do not fit the model described in "
                              f"{METADATA} ('model': {meta.get('model')}): {str(exc)[:300]}. Copy both "
                              "files from the same training run, or retrain.") from exc


def _build(cfg: ModelConfig, state: dict[str, torch.Tensor], trunk_weights: str | None, meta: dict,
           folder: Path, check_trunk: bool = True) -> ShoeNet:
    """One network from its config and stored tensors, its ImageNet trunk checked against the metadata."""
    model = build_model(cfg, weights=trunk_weights)
    if get_backbone(cfg.backbone).kind == "scratch":
        model.load_state_dict(state)
        return model
    stray = [k for k in state if not k.startswith(("heads.", "trunk."))]
    if stray:
        raise KeyError(f"unexpected tensors {stray[:3]}")
    model.heads.load_state_dict({k.removeprefix("heads."): v for k, v in state.items() if k.startswith("heads.")})
    imagenet_sha = state_checksum(model.trunk) if trunk_weights is not None and check_trunk else None
    tuned = {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")}
    if set(tuned) != set(model.trunk.tuned_state()):
        raise KeyError(f"retrained trunk tensors {len(tuned)}, expected {len(model.trunk.tuned_state())}")
    model.trunk.load_state_dict(tuned, strict=False)
    expected = meta.get("trunk", {}).get("sha256")
    if imagenet_sha is not None and expected and imagenet_sha != expected:
        raise CheckpointError(f"{folder}: the {cfg.backbone} trunk weights found here differ from those "
                              "the heads were trained on; install the weights named in "
                              f"{METADATA} ('trunk') or retrain")
    return model


def int8_graph(folder: str | Path, meta: dict) -> Path | None:
    """The model folder's int8 graph (``shoeclass quantize``), checked against its card; None when
    the card has none.

    Raises:
        CheckpointError: the file is missing or fails its sha256, or it was made from another
            model or another export of it (the message says to rerun ``shoeclass quantize``).
    """
    from .export import EXPORT_VERSION

    sec = meta.get("int8")
    if not sec:
        return None
    path = Path(folder) / sec["file"]
    fix = f"rerun `shoeclass quantize --model {folder} --data DATA`, or use runtime='torch'"
    if not path.is_file() or file_sha256(path) != sec["sha256"]:
        raise CheckpointError(f"{path}: missing or its sha256 does not match the card's int8 section; {fix}")
    if sec["model_sha256"] != meta["sha256"] or sec["export_version"] != EXPORT_VERSION:
        raise CheckpointError(f"{path}: made from another model or export than {folder}'s; {fix}")
    return path
