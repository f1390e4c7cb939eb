"""The model card's schema and checksum: what ``model.json`` must hold for a model to load.

The card decides how photos are preprocessed and how logits become decisions (thresholds,
temperatures, priors), so an edit to it changes results as much as an edit to the tensors.
:func:`card_checksum` covers every field but itself; :func:`card_problem` checks types, lengths
and ranges, so a card re-sealed after an edit still cannot carry a value this code cannot use.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import fields
from typing import Any

from .attributes import OUTPUT_KEYS
from .backbones import backbone_names
from .data import SIZE, preprocess_config
from .materials import MATERIAL_CLASSES, TENSORS as MATERIAL_TENSORS
from .models import POOLINGS, ModelConfig

__all__ = ["card_checksum", "changed_fields", "card_problem", "CHECKSUM_FIELD"]

CHECKSUM_FIELD = "card_sha256"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_N = len(OUTPUT_KEYS)


def card_checksum(card: dict) -> dict[str, str]:
    """sha256 digests of the card without its own checksum, in a canonical JSON form: ``"*"``
    over the whole card, and one per field (``"decision"``, ``"decision.thresholds"``, two
    levels deep) so that a changed, added or removed field can be named."""
    body = {k: v for k, v in card.items() if k != CHECKSUM_FIELD}
    out = {"*": _digest(body)}
    for key, value in body.items():
        out[key] = _digest(value)
        if isinstance(value, dict):
            out.update({f"{key}.{k}": _digest(v) for k, v in value.items()})
    return out


def changed_fields(card: dict) -> list[str]:
    """The fields whose digest differs from the one stored in the card (sorted, deepest first)."""
    stored = card.get(CHECKSUM_FIELD)
    if not isinstance(stored, dict):
        return [CHECKSUM_FIELD]
    now = card_checksum(card)
    diff = sorted(k for k in set(now) | set(stored) if k != "*" and now.get(k) != stored.get(k))
    deep = [k for k in diff if not any(other.startswith(k + ".") for other in diff)]
    return deep or (["(the card)"] if now["*"] != stored.get("*") else [])


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def card_problem(card: dict) -> tuple[str, str] | None:
    """The first (field, problem) that makes ``card`` unusable, or None."""
    try:
        _check(card)
    except _Bad as bad:
        return bad.field, bad.problem
    return None


class _Bad(Exception):
    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem


def _check(card: dict) -> None:
    _hex(card, "sha256")
    backbone = _get(card, "backbone", str)
    if backbone not in backbone_names():
        raise _Bad("backbone", f"unknown backbone {backbone!r}; known: {sorted(backbone_names())}")
    model = _model(_get(card, "model", dict), "model")
    if model["backbone"] != backbone:
        raise _Bad("model.backbone", f"{model['backbone']!r} differs from backbone {backbone!r}")
    _preprocessing(_get(card, "preprocessing", dict), backbone)
    if "trunk" in card:
        trunk = _get(card, "trunk", dict)
        if trunk.get("sha256") is not None:
            _hex(trunk, "sha256", "trunk.")
        if not isinstance(trunk.get("weights", "imagenet"), str):
            raise _Bad("trunk.weights", "must be a string (imagenet or a file path)")
    if card.get("ensemble") is not None:
        ens = _get(card, "ensemble", dict)
        members = ens.get("members")
        if not isinstance(members, list) or not members:
            raise _Bad("ensemble.members", "must be a non-empty list of model configs")
        for i, m in enumerate(members):
            _model(m, f"ensemble.members[{i}]")
        if not isinstance(ens.get("flip"), bool):
            raise _Bad("ensemble.flip", "must be true or false")
        if ens.get("material_tail") is not None:
            _material_tail(_get(ens, "material_tail", dict, "ensemble."))
    if card.get("decision") is not None:
        _decision(_get(card, "decision", dict))
    if card.get("materials") is not None:
        _materials(_get(card, "materials", dict))
    if card.get("int8") is not None:
        _int8(_get(card, "int8", dict))


def _get(d: dict, key: str, kind: type, where: str = "") -> Any:
    if key not in d:
        raise _Bad(where + key, "missing")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Bad(where + key, f"must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _hex(d: dict, key: str, where: str = "") -> None:
    if not isinstance(d.get(key), str) or not _HEX64.match(d[key]):
        raise _Bad(where + key, "must be a sha256: 64 lowercase hex digits")


def _model(m: Any, where: str) -> dict:
    if not isinstance(m, dict):
        raise _Bad(where, "must be an object")
    known = {f.name: f for f in fields(ModelConfig)}
    extra = sorted(set(m) - set(known))
    if extra:
        raise _Bad(f"{where}.{extra[0]}", f"unknown model setting; known: {sorted(known)}")
    defaults = ModelConfig()
    for name in known:
        if name not in m:
            continue
        want = type(getattr(defaults, name))
        value = m[name]
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            raise _Bad(f"{where}.{name}", f"must be a {want.__name__}, got {value!r}")
        if want is int and value < 0:
            raise _Bad(f"{where}.{name}", f"must be >= 0, got {value}")
    if m.get("backbone", defaults.backbone) not in backbone_names():
        raise _Bad(f"{where}.backbone", f"unknown backbone {m.get('backbone')!r}; known: {sorted(backbone_names())}")
    if m.get("pooling", defaults.pooling) not in POOLINGS:
        raise _Bad(f"{where}.pooling", f"must be one of {POOLINGS}")
    if not 0 <= m.get("dropout", defaults.dropout) < 1:
        raise _Bad(f"{where}.dropout", "must be in [0, 1)")
    return {"backbone": defaults.backbone, **m}


def _preprocessing(pre: dict, backbone: str) -> None:
    ref = preprocess_config(backbone)
    for key in ("size", "pad", "brighten"):  # steps this code implements; only their settings may vary
        if pre.get(key) != ref[key]:
            raise _Bad(f"preprocessing.{key}", f"must be {ref[key]!r} (what this shoeclass implements), "
                                               f"got {pre.get(key)!r}")
    assert ref["size"] == SIZE
    for key, lo in (("mean", 0.0), ("std", 1e-6)):
        _floats(pre, key, 3, lo, 1.0, "preprocessing.")


def _floats(d: dict, key: str, n: int | None, lo: float, hi: float, where: str, open_lo: bool = False) -> list:
    values = d.get(key)
    if not isinstance(values, list) or (n is not None and len(values) != n):
        raise _Bad(where + key, f"must be a list of {n} numbers, got {_short(values)}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi \
                or (open_lo and v == lo):
            raise _Bad(f"{where}{key}[{i}]", f"must be a finite number in {'(' if open_lo else '['}{lo}, {hi}], "
                                             f"got {v!r}")
    return values


def _decision(dec: dict) -> None:
    _floats(dec, "thresholds", _N, 0.0, 1.0, "decision.", open_lo=True)
    if dec.get("calibration") is not None:
        _floats(_get(dec, "calibration", dict, "decision."), "temperature", _N, 0.0, 1e6, "decision.calibration.",
                open_lo=True)
    if dec.get("gate_calibration") is not None:
        gate = _get(dec, "gate_calibration", dict, "decision.")
        _floats({"temperature": [gate.get("temperature")]}, "temperature", 1, 0.0, 1e6,
                "decision.gate_calibration.", open_lo=True)
    if dec.get("fusion") is not None:
        fusion = _get(dec, "fusion", dict, "decision.")
        _floats(fusion, "priors", _N, 0.0, 1.0, "decision.fusion.", open_lo=True)
        _floats(fusion, "rho", _N, 0.0, 1.0, "decision.fusion.")
        _floats({"eps": [fusion.get("eps")]}, "eps", 1, 0.0, 0.5, "decision.fusion.", open_lo=True)
    if dec.get("clusters") is not None:
        clusters = _get(dec, "clusters", dict, "decision.")
        if not isinstance(clusters.get("clusters"), list) or not clusters["clusters"]:
            raise _Bad("decision.clusters.clusters", "must be a non-empty list")


INT8_FILE = "model.int8.onnx"  # the int8 graph a card may seal (checkpoint.int8_graph)


def _sealed_file(sec: dict, where: str, name: str) -> None:
    """A file beside model.json that the card seals: its name, its sha256, the model it belongs to."""
    if sec.get("file") != name:
        raise _Bad(where + "file", f"must be {name!r} (beside model.json), got {_short(sec.get('file'))}")
    _hex(sec, "sha256", where)
    _hex(sec, "model_sha256", where)


def _int8(sec: dict) -> None:
    _sealed_file(sec, "int8.", INT8_FILE)
    _get(sec, "export_version", int, "int8.")
    _get(sec, "calibration", dict, "int8.")


def _material_tail(sec: dict) -> None:
    where = "ensemble.material_tail."
    if _get(sec, "first", int, where) < 0:
        raise _Bad(where + "first", f"must be a block index >= 0, got {sec['first']}")
    if _get(sec, "rank", int, where) < 1:
        raise _Bad(where + "rank", f"must be >= 1, got {sec['rank']}")
    parts = _get(sec, "parts", dict, where)
    if not parts or set(parts) - set(MATERIAL_CLASSES):
        raise _Bad(where + "parts", f"must hold one or more of {list(MATERIAL_CLASSES)}, got {sorted(parts)}")
    for part, classes in parts.items():
        _classes(classes, part, f"{where}parts.{part}")


def _classes(classes: Any, part: str, at: str) -> None:
    if (not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes)
            or set(classes) - set(MATERIAL_CLASSES[part])):
        raise _Bad(at, f"must be two or more distinct classes of {list(MATERIAL_CLASSES[part])}, got {_short(classes)}")


def _materials(sec: dict) -> None:
    where = "materials."
    _sealed_file(sec, where, MATERIAL_TENSORS)
    dim = _get(sec, "dim", int, where)
    if dim < 1:
        raise _Bad(where + "dim", f"must be >= 1, got {dim}")
    if not isinstance(sec.get("tail", False), bool):
        raise _Bad(where + "tail", "must be true or false")
    parts = _get(sec, "parts", dict, where)
    if not parts or set(parts) - set(MATERIAL_CLASSES):
        raise _Bad(where + "parts", f"must hold one or more of {list(MATERIAL_CLASSES)}, got {sorted(parts)}")
    for part, head in parts.items():
        at = f"{where}parts.{part}."
        if not isinstance(head, dict):
            raise _Bad(at[:-1], "must be an object")
        classes = _get(head, "classes", list, at)
        _classes(classes, part, at + "classes")
        _floats({"temperature": [head.get("temperature")]}, "temperature", 1, 0.0, 1e6, at, open_lo=True)
        _floats(head, "priors", len(classes), 0.0, 1.0, at, open_lo=True)
        _floats({"rho": [head.get("rho")]}, "rho", 1, 0.0, 1.0, at)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."
