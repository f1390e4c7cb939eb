"""Public entry point: ``classify_images`` and the ``Classifier`` that holds a loaded model.

Flow: photo -> tensor (data.EvalPreset) -> trunk -> 14 heads (+ gate, suitability) ->
calibration -> clusters -> fusion of the M photos -> tariff rules -> ItemResult.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit

from .attributes import OUTPUT_KEYS
from .backends import load_runtime
from .checkpoint import load_checkpoint, resolve_path
from .data import EvalPreset
from .decision import DecisionLayer
from .images import ImageError, ImageInput, describe_source, load_image
from .result import ItemResult, PhotoResult
from .runtime import prepare_for_inference
from .facts import DeclaredFacts
from .tariff import classify_tariff

__all__ = ["Classifier", "classify_images"]

logger = logging.getLogger(__name__)


class Classifier:
    """A loaded model, ready to classify items; thread-safe for concurrent ``classify`` calls.

    Args:
        model: a model folder (None: the shipped default in weights/default).
        bf16: bf16 autocast on the CPU; None chooses it when the CPU supports bf16 natively.
        batch_size: photos per trunk pass.
        runtime: what runs the network: ``auto`` (the fastest installed; PyTorch without the
            ``onnx`` extra), ``torch``, ``openvino`` or ``onnxruntime`` (see ``backends.py``).
    """

    def __init__(self, model: str | Path | None = None, bf16: bool | None = None, batch_size: int = 32,
                 runtime: str | None = None) -> None:
        self.path = resolve_path(model)
        self.net, self.meta = load_checkpoint(self.path)
        prepare_for_inference(self.net)
        self.preset = EvalPreset(self.meta["backbone"])
        self.bf16, self.batch_size = bf16, batch_size
        self.runtime = load_runtime(runtime, self.net, self.meta, bf16)
        self.decision = DecisionLayer.from_dict(self.meta.get("decision"))
        self.thresholds = self.decision.thresholds
        ens = self.meta.get("ensemble")
        # members: fine-tuned models averaged (1 for a single model); mirror: the mirrored photo too
        self.info = {"name": self.path.name, "backbone": self.meta["backbone"], "sha256": self.meta["sha256"],
                     "members": len(ens["members"]) if ens else 1, "mirror": bool(ens and ens["flip"]),
                     "runtime": f"{self.runtime.name} {self.runtime.precision}"}

    def predict_tensors(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Outputs for a (B, 3, 224, 224) batch: raw ``logits`` and calibrated ``probs`` (B, 14),
        ``gate`` logits (B, C) and ``suitability`` (B, 14) when the model has them."""
        outs: dict[str, list] = {}
        for chunk in x.split(self.batch_size):
            for k, v in self.runtime(chunk).items():
                outs.setdefault(k, []).append(v)
        res = {k: np.concatenate(v) for k, v in outs.items()}
        res["probs"] = self.decision.photo_probs(res["logits"], res.get("gate"))  # (B, 14)
        if "suitability" in res:
            res["suitability"] = expit(res["suitability"])
        return res

    def classify(self, images: ImageInput | Sequence[ImageInput], declared: DeclaredFacts | dict | None = None,
                 top_k: int = 5) -> ItemResult:
        """Classify the M photos of one item; unreadable photos get an error, the rest go on.

        Raises:
            ValueError: bad declared facts (names the field and the allowed values) or top_k.
        """
        facts = declared if isinstance(declared, DeclaredFacts) else DeclaredFacts.from_dict(declared)
        photos: list[PhotoResult] = []
        tensors: list[torch.Tensor] = []
        for i, src in enumerate(_as_list(images)):
            name = describe_source(src, i)
            try:
                tensors.append(self.preset(load_image(src, name)))
                photos.append(PhotoResult(name))
            except ImageError as exc:
                logger.warning("%s", exc)
                photos.append(PhotoResult(name, error=str(exc)))
        ok = [p for p in photos if p.error is None]
        if not ok:
            return ItemResult(photos, None, self.thresholds, model=self.info)
        out = self.predict_tensors(torch.stack(tensors))
        gates = self.decision.gate_probs(out["gate"]) if "gate" in out else None  # (M, C)
        fused, cluster = self.decision.item(out["probs"], gates, out.get("suitability"))
        for j, p in enumerate(ok):
            p.probs = out["probs"][j]  # row j of the (M, 14) per-photo matrix
            if "suitability" in out:
                p.suitability = out["suitability"][j]
            if gates is not None and self.decision.clusters is not None:
                p.cluster = {"name": self.decision.clusters.clusters_[int(gates[j].argmax())].name,
                             "probability": round(float(gates[j].max()), 6)}
        tariff = classify_tariff(dict(zip(OUTPUT_KEYS, map(float, fused))), facts, top_k=top_k,
                                 atypical=tuple(cluster["atypical_firing"]) if cluster else (),
                                 cluster=cluster["name"] if cluster else None).to_dict()
        return ItemResult(photos, fused, self.thresholds, cluster=cluster, tariff=tariff, model=self.info)


@functools.lru_cache(maxsize=4)
def _cached_classifier(path: str | None, bf16: bool | None, runtime: str | None) -> Classifier:
    return Classifier(path, bf16=bf16, runtime=runtime)


def _as_list(images) -> list:
    if isinstance(images, (str, Path, bytes, bytearray, np.ndarray)) or hasattr(images, "getbands"):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    return [images]


def classify_images(images: ImageInput | Sequence[ImageInput], model: str | Path | Classifier | None = None,
                    *, declared: DeclaredFacts | dict | None = None, top_k: int = 5,
                    bf16: bool | None = None, runtime: str | None = None) -> ItemResult:
    """Classify the photos of one footwear item.

    Args:
        images: one photo or the M photos of one item: file paths, encoded bytes, PIL images or
            uint8 numpy arrays, in any mix.
        model: a model folder, a loaded :class:`Classifier`, or None for the shipped default.
        declared: facts the declarant states (:class:`~shoeclass.facts.DeclaredFacts` or a dict
            such as ``{"upper_material": "leather", "sole_material": "rubber", "insole_cm": 26}``;
            the names are in ``shoeclass.facts.FACTS``, any of the 13 attributes included);
            every fact is optional, unstated ones are marginalised.
        top_k: tariff candidates kept at each of 4, 6 and 10 digits.
        bf16: force bf16 (True) or fp32 (False); None picks bf16 where the CPU supports it.
        runtime: ``auto`` (default), ``torch``, ``openvino`` or ``onnxruntime`` (see :class:`Classifier`).

    Returns:
        An :class:`ItemResult`; ``result.to_dict()["attributes"]`` maps every attribute key to
        the item's probability, ``result.to_dict()["photos"][i]`` holds photo i's own values or
        its error, ``["cluster"]`` the cluster and wrong-cluster check, ``["tariff"]`` the ranked
        codes with rationale, missing facts and status (see ``result.py``).

    Raises:
        ValueError: bad ``declared`` facts or ``top_k``. Unreadable photos never raise: they
            get a per-photo error in the result.

    Example:
        >>> from shoeclass import classify_images
        >>> r = classify_images(["examples/boot_side.jpg", "examples/boot_sole.jpg"])
        >>> r.to_dict()["attributes"]["height_knee"]
    """
    clf = model if isinstance(model, Classifier) else _cached_classifier(
        str(model) if model is not None else None, bf16, runtime)
    return clf.classify(images, declared=declared, top_k=top_k)
