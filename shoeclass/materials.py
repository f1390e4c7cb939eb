"""Material heads: the upper's and the outer sole's material class from the photo embedding.

The heading (6401-6405) is decided by the material of the upper (chapter 64 note 4(a): greatest
external surface) and of the outer sole (note 4(b): greatest ground contact); see
shared/spec/tariff-ch64.md. The classes are the tariff's (notes 3(a), 3(b)):

* upper: leather (suede, nubuck, patent) / composition leather / textile / rubber or plastics
  (incl. coated textiles, "synthetic") / other (fur skins, straw, ...);
* sole: rubber or plastics / leather or composition leather / wood or cork / textile / other.

Each part is one softmax over the classes that had enough text-labelled training photos (the
others get probability 0). It reads :func:`head_input`: the photo ``embedding``
``Classifier.predict_tensors`` returns (untuned ImageNet features, unit length) and, from an
ensemble, its ``features`` beside it (what the tuned tails make of the photo, unit length; they
read leather better), standardised once more on the training photos. A model with a material tail
(``models.MaterialTail``: the ImageNet tail's last blocks tuned on the materials) also gives
``material`` logits; each part's probability is then the geometric mean of the head's softmax and
the tail's. Temperature-calibrated on validation. Items fuse their photos with the Bayesian fusion
of the attributes (``fusion.py``), one class against the rest, renormalised. The heads live beside the model they were fitted on:
``materials.safetensors`` and the ``materials`` section of the model card (classes, temperature,
priors, the checksum of the tensor file), so the card checksum covers them;
``shoeclass fit-materials`` writes them (:mod:`shoeclass.training.materials`).

Example:
    >>> heads = MaterialHeads.load("weights/default", meta)      # None when not fitted
    >>> heads.photo_probs(head_input(outputs), outputs.get("material"))["upper"]  # (B, 5)
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .fusion import BayesianFusion
from .tariff import load_tariff_rules

__all__ = ["MATERIAL_CLASSES", "TENSORS", "PartHead", "MaterialHeads", "combine_logits", "split_by_part",
           "tariff_prior", "as_named", "unresolved_values"]

logger = logging.getLogger(__name__)

MATERIAL_CLASSES: dict[str, tuple[str, ...]] = {
    "upper": ("leather", "composition_leather", "textile", "rubber_plastics", "other"),
    "sole": ("rubber_plastics", "leather", "wood_cork", "textile", "other"),
}
TENSORS = "materials.safetensors"

# Material class -> the values of the declared fact (facts.py) it stands for. A class the photo
# cannot split further (rubber vs plastics, wood vs cork) is shared among its values as the rules
# file's prior of that fact shares them (configs/tariff_ch64.yaml).
_FACT_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "upper": {"leather": ("leather",), "composition_leather": ("composition_leather",), "textile": ("textile",),
              "rubber_plastics": ("rubber", "plastics"), "other": ("other",)},
    "sole": {"rubber_plastics": ("rubber", "plastics"), "leather": ("leather", "composition_leather"),
             "wood_cork": ("wood", "cork"), "textile": ("textile",), "other": ("other",)},
}
FACT_OF_PART = {"upper": "upper_material", "sole": "sole_material"}


def unresolved_values(fact: str) -> tuple[tuple[str, ...], ...]:
    """The groups of a material fact's values that one photo class stands for, so the photo cannot
    tell them apart (``upper_material``: rubber from plastics); empty for other facts."""
    part = {f: p for p, f in FACT_OF_PART.items()}.get(fact)
    return tuple(v for v in _FACT_VALUES[part].values() if len(v) > 1) if part else ()


@dataclass
class PartHead:
    """One part's softmax: ``classes`` (a subset of ``MATERIAL_CLASSES[part]``), weights ``w``
    (D, K), bias ``b`` (K,), temperature, the training class frequencies ``priors`` (K,) and the
    fusion's photo correlation ``rho``."""

    part: str
    classes: tuple[str, ...]
    w: np.ndarray
    b: np.ndarray
    temperature: float
    priors: np.ndarray
    rho: float

    def logits(self, z: np.ndarray, tail: np.ndarray | None = None) -> np.ndarray:
        """(B, K) scores before the temperature: the head's logits or, given the material tail's
        logits of this part, the mean of the two log-softmaxes (their geometric mean)."""
        return combine_logits(z @ self.w + self.b, tail)

    def probs(self, z: np.ndarray, tail: np.ndarray | None = None) -> np.ndarray:
        """(B, len(MATERIAL_CLASSES[part])) calibrated probabilities; classes without an output get 0."""
        s = self.logits(z, tail) / self.temperature
        e = np.exp(s - s.max(1, keepdims=True))
        out = np.zeros((len(z), len(MATERIAL_CLASSES[self.part])))
        out[:, self._cols()] = e / e.sum(1, keepdims=True)
        return out

    def fuse(self, probs: np.ndarray) -> np.ndarray:
        """(M, len(MATERIAL_CLASSES[part])) photo probabilities -> the item's; one photo is returned as is."""
        cols = self._cols()
        fusion = BayesianFusion.from_dict({"priors": list(self.priors), "rho": self.rho, "eps": 1e-6})
        q = fusion.fuse(np.asarray(probs, np.float64)[:, cols])  # (K,) one class against the rest each
        out = np.zeros(probs.shape[1])
        out[cols] = q / q.sum()
        return out

    def _cols(self) -> list[int]:
        return [MATERIAL_CLASSES[self.part].index(c) for c in self.classes]


def combine_logits(head: np.ndarray, tail: np.ndarray | None) -> np.ndarray:
    """(B, K) head logits, and the material tail's for the same classes -> the mean of their
    log-softmaxes (the log of their softmaxes' geometric mean, up to a constant); the head's alone
    without a tail."""
    if tail is None:
        return head
    return (_log_softmax(np.asarray(head, np.float64)) + _log_softmax(np.asarray(tail, np.float64))) / 2


def split_by_part(logits, parts: Mapping[str, Sequence[str]]) -> dict:
    """(B, K) material logits (an array or a tensor), each part's classes side by side in ``parts``
    order (``models.MaterialTail``) -> ``{part: (B, K_part)}``."""
    out, at = {}, 0
    for part, classes in parts.items():
        out[part], at = logits[:, at:at + len(classes)], at + len(classes)
    return out


def _log_softmax(s: np.ndarray) -> np.ndarray:
    s = s - s.max(1, keepdims=True)
    return s - np.log(np.exp(s).sum(1, keepdims=True))


def head_input(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """(B, D) input of the heads from a batch's network outputs: the ``embedding`` and, where the
    network gives them, the ``features``, each scaled to unit length, side by side."""
    parts = [np.asarray(outputs[k], dtype=np.float32) for k in ("embedding", "features") if k in outputs]
    if not parts:
        raise ValueError("the network gives no photo embedding: material heads need one")
    return np.concatenate([p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12) for p in parts], 1)


class MaterialHeads:
    """The upper and sole heads of one model folder, with the standardisation they share.

    Args:
        parts: ``{"upper": PartHead, "sole": PartHead}`` (either may be missing).
        mu, sigma: (D,) standardisation of the unit-length embedding on the training photos.
        info: what the card records beyond the tensors (data summary, metrics).
        tail: ``{part: classes}`` of the network's ``material`` logits (``models.MaterialTail``)
            when the heads combine with them (each part's classes those of its head); None: not.
    """

    def __init__(self, parts: Mapping[str, PartHead], mu: np.ndarray, sigma: np.ndarray,
                 info: dict | None = None, tail: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self.parts, self.mu, self.sigma = dict(parts), mu, sigma
        self.info = dict(info or {})
        self.tail = {p: tuple(c) for p, c in tail.items()} if tail else None

    def standardise(self, embedding: np.ndarray) -> np.ndarray:
        """(B, D) embedding -> (B, D) head input; re-normalised to unit length first, so an
        embedding given unnormalised reads the same."""
        e = np.asarray(embedding, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.mu.size:
            raise ValueError(f"embedding must be (B, {self.mu.size}), got shape {e.shape}")
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        return (e - self.mu) / self.sigma

    def photo_probs(self, embedding: np.ndarray, tail: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """(B, D) photo embeddings (``head_input``) and, for heads that combine with a material
        tail, its (B, K) ``material`` logits -> per part (B, len(MATERIAL_CLASSES[part])) probabilities.

        Raises:
            ValueError: heads that combine with a material tail given none, or of another width.
        """
        z = self.standardise(embedding)
        tails = self.split_tail(tail, len(z))
        return {part: head.probs(z, tails.get(part)) for part, head in self.parts.items()}

    def split_tail(self, tail: np.ndarray | None, n: int) -> dict[str, np.ndarray]:
        """The tail's (B, K) logits as ``{part: (B, K_part)}``; empty for heads without a tail."""
        if self.tail is None:
            return {}
        width = sum(len(c) for c in self.tail.values())
        if tail is None or np.shape(tail) != (n, width):
            got = None if tail is None else np.shape(tail)
            raise ValueError(f"these material heads combine with the network's material logits ({n}, {width}), "
                             f"got {got}: run the model folder they were fitted in")
        return split_by_part(np.asarray(tail), self.tail)

    def item_probs(self, photo_probs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per part, the (M, K) photo probabilities of one item fused into (K,)."""
        return {part: self.parts[part].fuse(np.asarray(p)) for part, p in photo_probs.items()}

    # -- persistence ---------------------------------------------------------------------------

    def save(self, folder: str | Path) -> dict:
        """Write ``materials.safetensors`` into the model folder and return the ``materials``
        section for its card (the caller seals it in: ``checkpoint.update_card``)."""
        folder = Path(folder)
        tensors = {"mu": self.mu, "sigma": self.sigma}
        for part, h in self.parts.items():
            tensors[f"{part}.w"], tensors[f"{part}.b"] = h.w, h.b
        tmp = folder / (TENSORS + ".tmp")
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(tmp))
        tmp.replace(folder / TENSORS)
        (folder / TENSORS).chmod(0o644)  # safetensors writes 0600; the model folder ships readable
        return {**self.info, "file": TENSORS, "sha256": _sha256(folder / TENSORS), "dim": int(self.mu.size),
                "tail": self.tail is not None,
                "parts": {part: {"classes": list(h.classes), "temperature": float(h.temperature),
                                 "priors": [float(v) for v in h.priors], "rho": float(h.rho)}
                          for part, h in self.parts.items()}}

    @classmethod
    def load(cls, folder: str | Path, meta: Mapping) -> "MaterialHeads | None":
        """The heads of a model folder, or None when its card has no ``materials`` section.

        Raises:
            ValueError: the tensor file missing or not matching its checksum, or heads fitted on
                another model's features (the message says to rerun ``shoeclass fit-materials``).
        """
        sec = meta.get("materials")
        if not sec:
            return None
        path = Path(folder) / sec["file"]
        fix = f"rerun `shoeclass fit-materials --model {folder} --data DATA`"
        if not path.is_file() or _sha256(path) != sec["sha256"]:
            raise ValueError(f"{path}: missing or its sha256 does not match the card's materials section; {fix}")
        if sec.get("model_sha256") != meta.get("sha256"):
            raise ValueError(f"{folder}: the material heads were fitted on another model's features; {fix}")
        tail = ((meta.get("ensemble") or {}).get("material_tail") or {}).get("parts") if sec.get("tail") else None
        if sec.get("tail") and (not tail or any(list(tail.get(p, ())) != list(h["classes"])
                                                for p, h in sec["parts"].items())):
            raise ValueError(f"{folder}: the material heads combine with a material tail the model lacks, or "
                             f"one of other classes; {fix}")
        t = load_file(str(path))
        parts = {part: PartHead(part, tuple(p["classes"]), t[f"{part}.w"], t[f"{part}.b"], float(p["temperature"]),
                                np.asarray(p["priors"]), float(p["rho"]))
                 for part, p in sec["parts"].items()}
        info = {k: v for k, v in sec.items() if k not in ("file", "sha256", "dim", "parts", "tail")}
        return cls(parts, t["mu"], t["sigma"], info, tail)


def as_named(probs: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{part: (K,) array}`` -> ``{part: {class: p}}`` as the result JSON holds it."""
    return {part: {c: round(float(v), 6) for c, v in zip(MATERIAL_CLASSES[part], p)} for part, p in probs.items()}


def tariff_prior(materials: Mapping[str, Mapping[str, float]],
                 rules_path: str | Path | None = None) -> dict[str, dict[str, float]]:
    """``{"upper": {class: p}, "sole": {class: p}}`` -> per-item priors of the declared facts
    ``upper_material`` / ``sole_material`` (``classify_tariff(priors=...)``) for unstated materials.
    A class's probability is shared among its fact values as the rules file's prior shares them.

    Raises:
        ValueError: an unknown part or class, or probabilities that do not sum to 1.
    """
    rules = load_tariff_rules(rules_path)
    out: dict[str, dict[str, float]] = {}
    for part, dist in materials.items():
        if part not in _FACT_VALUES:
            raise ValueError(f"materials: unknown part {part!r}; allowed: {list(_FACT_VALUES)}")
        bad = sorted(set(dist) - set(MATERIAL_CLASSES[part]))
        total = sum(float(v) for v in dist.values())
        if bad or abs(total - 1.0) > 1e-3:
            raise ValueError(f"materials[{part!r}] must map classes of {list(MATERIAL_CLASSES[part])} to "
                             f"probabilities summing to 1; unknown {bad}, sum {total:.4f}")
        var = next(v for v in rules.variables.values() if v.field == FACT_OF_PART[part])
        share = var.prior or {}
        values: dict[str, float] = {}
        for cls, p in dist.items():
            names = _FACT_VALUES[part][cls]
            weight = [float(share.get(var.from_fact(n), 1.0)) for n in names]
            for n, wt in zip(names, weight):
                values[n] = values.get(n, 0.0) + float(p) / total * wt / sum(weight)
        out[FACT_OF_PART[part]] = values
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
