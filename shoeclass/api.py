"""Public entry point: ``classify_images`` and the ``Classifier`` that holds a loaded model.

Flow: photo -> tensor (data.EvalPreset) -> trunk -> 14 heads (+ gate, suitability, material
heads on the photo embedding) -> calibration -> clusters -> fusion of the M photos -> tariff rules
(the photos' materials as the prior of undeclared materials) -> ItemResult (and the check of a
declared code).
"""
from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit

from .attributes import OUTPUT_KEYS
from .backends import load_runtime
from .blank import blank_problem
from .check import check_code, normalise_code
from .checkpoint import load_checkpoint, resolve_path
from .data import EvalPreset
from .decision import DecisionLayer
from .facts import DeclaredFacts
from .images import ImageError, ImageInput, describe_source, load_image
from .materials import MaterialHeads, head_input, as_named, tariff_prior
from .result import ItemResult, PhotoResult
from .runtime import batched, prepare_for_inference
from .tariff import classify_tariff, input_calibration_for

__all__ = ["Classifier", "classify_images", "check_arguments", "split_code", "Cancelled"]

logger = logging.getLogger(__name__)


class Cancelled(RuntimeError):
    """A classification stopped because its ``stop`` event was set (client gone, deadline passed)."""


class Classifier:
    """A loaded model, ready to classify items; thread-safe for concurrent ``classify`` calls.

    Args:
        model: a model folder (None: the shipped default in weights/default).
        bf16: bf16 autocast on the CPU; None chooses it when the CPU supports bf16 natively.
        batch_size: photos per trunk pass.
        device: where the model runs (default the CPU; ``runtime.default_device()`` picks CUDA
            when present). On CUDA bf16 autocast is on unless ``bf16`` is False.
        runtime: what runs the network: ``torch``, ``openvino``, ``onnxruntime`` or ``auto`` (the
            fastest installed); None: ``backends.DEFAULT`` (see ``backends.py``).
        materials: use the folder's material heads when it has them (they read the photo
            embedding); False ignores them (e.g. to refit them).
    """

    def __init__(self, model: str | Path | None = None, bf16: bool | None = None, batch_size: int = 32,
                 device: torch.device | str = "cpu", runtime: str | None = None, materials: bool = True) -> None:
        self.path = resolve_path(model)
        self.device = torch.device(device)
        self.net, self.meta = load_checkpoint(self.path)
        prepare_for_inference(self.net).to(self.device)
        pre = self.meta["preprocessing"]  # validated against this code's preprocessing on load
        self.preset = EvalPreset(self.meta["backbone"], tuple(pre["mean"]), tuple(pre["std"]))
        self.bf16, self.batch_size = bf16, batch_size
        self.runtime = load_runtime(runtime, self.net, self.meta, bf16, self.device, self.path)
        self.decision = DecisionLayer.from_dict(self.meta.get("decision"))
        self.tariff_inputs = input_calibration_for(self.meta["sha256"])  # fitted on val for this model
        self.thresholds = self.decision.thresholds
        # None until `shoeclass fit-materials` wrote them into the card
        self.materials = MaterialHeads.load(self.path, self.meta) if materials else None
        ens = self.meta.get("ensemble")
        # members: fine-tuned models averaged (1 for a single model); mirror: the mirrored photo too
        self.info = {"name": self.path.name, "backbone": self.meta["backbone"], "sha256": self.meta["sha256"],
                     "members": len(ens["members"]) if ens else 1, "mirror": bool(ens and ens["flip"]),
                     "runtime": f"{self.runtime.name} {self.runtime.precision}"}

    def network_outputs(self, x: torch.Tensor, stop: threading.Event | None = None) -> dict[str, np.ndarray]:
        """What the network returns for a (B, 3, 224, 224) batch, batch by batch through the
        runtime: ``logits`` (B, 14), ``gate`` (B, C) and ``suitability`` (B, 14) logits when the
        model has them, the raw ``embedding`` (B, D), an ensemble's ``features`` and, with a
        material tail, its ``material`` logits.

        Raises:
            Cancelled: ``stop`` was set (checked between batches).
        """
        def run(chunk: torch.Tensor) -> dict[str, np.ndarray]:
            if stop is not None and stop.is_set():
                raise Cancelled("classification cancelled")
            return self.runtime(chunk)

        return batched(run, x, self.batch_size)

    def photo_outputs(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`network_outputs` made per-photo estimates: the raw ``logits`` and the
        calibrated ``probs`` (B, 14), ``gate`` logits (B, C), ``suitability`` (B, 14) in [0, 1],
        ``embedding`` (B, D) standardised to unit length (``ItemChecks.embed``)."""
        res = dict(raw)
        res["probs"] = self.decision.photo_probs(res["logits"], res.get("gate"))  # (B, 14)
        if "suitability" in res:
            res["suitability"] = expit(res["suitability"])
        if "embedding" in res:
            res["embedding"] = self.decision.checks.embed(res["embedding"])  # (B, D) unit rows
            if self.materials is not None:  # (B, K) per part
                probs = self.materials.photo_probs(head_input(res), res.get("material"))
                res.update({f"materials_{part}": p for part, p in probs.items()})
        return res

    def predict_tensors(self, x: torch.Tensor, stop: threading.Event | None = None) -> dict[str, np.ndarray]:
        """:meth:`photo_outputs` for a (B, 3, 224, 224) batch.

        Raises:
            Cancelled: ``stop`` was set (checked between batches).
        """
        return self.photo_outputs(self.network_outputs(x, stop))

    def classify(self, images: ImageInput | Sequence[ImageInput], declared: DeclaredFacts | dict | None = None,
                 top_k: int = 5, code: str | None = None) -> ItemResult:
        """Classify the M photos of one item; unreadable or blank photos get an error, the rest go on.
        A declared ``code`` (10 digits, or ``declared["code"]``) is checked against the photos.

        Raises:
            ValueError: bad declared facts (names the field and the allowed values), code or
                top_k, raised before any photo is decoded.
        """
        declared, code = split_code(declared, code)
        facts, top_k = check_arguments(declared, top_k)
        photos, x = self.prepare(images)
        return self.predict_item(photos, x, facts, top_k, code=code)

    def prepare(self, images: ImageInput | Sequence[ImageInput],
                stop: threading.Event | None = None) -> tuple[list[PhotoResult], torch.Tensor | None]:
        """Decode, check and preprocess the photos: every photo's :class:`PhotoResult` (with its
        error, if any) and the (N, 3, 224, 224) batch of the N usable ones (None when N = 0).

        Raises:
            Cancelled: ``stop`` was set (checked between photos).
        """
        photos: list[PhotoResult] = []
        tensors: list[torch.Tensor] = []
        for i, src in enumerate(_as_list(images)):
            if stop is not None and stop.is_set():
                raise Cancelled("classification cancelled")
            name = describe_source(src, i)
            try:
                img = load_image(src, name)
                blank = blank_problem(img)
                if blank:
                    raise ImageError(name, blank, "photograph the item itself")
                tensors.append(self.preset(img))
                photos.append(PhotoResult(name))
            except ImageError as exc:
                logger.warning("%s", exc)
                photos.append(PhotoResult(name, error=str(exc)))
        # stacked in numpy: one thread, no wait on torch's pool while OpenVINO holds the cores
        return photos, torch.from_numpy(np.stack([t.numpy() for t in tensors])) if tensors else None

    def predict_item(self, photos: list[PhotoResult], x: torch.Tensor | None, facts: DeclaredFacts, top_k: int,
                     stop: threading.Event | None = None, code: str | None = None) -> ItemResult:
        """The network, fusion and tariff for the batch :meth:`prepare` made (fills ``photos`` in);
        ``code``: a declared 10-digit code to check (:func:`~shoeclass.check.check_code`)."""
        ok = [p for p in photos if p.error is None]
        if x is None or not ok:
            return ItemResult(photos, None, self.thresholds, model=self.info)
        out = self.predict_tensors(x, stop)
        gates = self.decision.gate_probs(out["gate"]) if "gate" in out else None  # (M, C)
        weights, set_aside = self.decision.screen(out["probs"], out.get("suitability"), [p.photo for p in ok],
                                                  out.get("embedding"))
        fused, cluster = self.decision.item(out["probs"], gates, out.get("suitability"), weights)
        odd = self.decision.checks.odd_photo(out.get("embedding"), weights)
        review = None if odd is None else {
            "reason": "different_products", "photo": ok[odd[0]].photo,
            "detail": f"{ok[odd[0]].photo} looks like another product than the other photos "
                      f"(embedding cosine {odd[1]:.3f} < {self.decision.checks.min_cosine:.3f})"}
        for j, p in enumerate(ok):
            p.probs = out["probs"][j]  # row j of the (M, 14) per-photo matrix
            if "suitability" in out:
                p.suitability = out["suitability"][j]
            if gates is not None and self.decision.clusters is not None:
                p.cluster = {"name": self.decision.clusters.clusters_[int(gates[j].argmax())].name,
                             "probability": round(float(gates[j].max()), 6)}
        materials = None
        if "materials_upper" in out or "materials_sole" in out:
            per_photo = {part: out[f"materials_{part}"] for part in self.materials.parts}  # (M, K) each
            for j, p in enumerate(ok):
                p.materials = as_named({part: v[j] for part, v in per_photo.items()})
            materials = as_named(self.materials.item_probs(per_photo))
        priors = tariff_prior(materials) if materials else None  # declared materials still win
        item = dict(zip(OUTPUT_KEYS, map(float, fused)))
        tariff = classify_tariff(item, facts, top_k=top_k, priors=priors,
                                 atypical=tuple(cluster["atypical_firing"]) if cluster else (),
                                 cluster=cluster["name"] if cluster else None,
                                 input_calibration=self.tariff_inputs).to_dict()
        check = check_code(item, code, facts, priors=priors) if code is not None else None
        return ItemResult(photos, fused, self.thresholds, cluster=cluster, tariff=tariff, model=self.info,
                          set_aside=set_aside, review=review, materials=materials, check=check)


def split_code(declared: DeclaredFacts | Mapping | None, code: str | None = None
               ) -> tuple[DeclaredFacts | Mapping | None, str | None]:
    """``declared`` without its ``"code"`` entry, and the declared code to check as 10 digits
    (``code`` or ``declared["code"]``; None when neither is given).

    Raises:
        ValueError: both given and different, or a code that is not a leaf of headings 6401-6405.
    """
    if isinstance(declared, Mapping) and "code" in declared:
        declared = dict(declared)
        inner = declared.pop("code")
        if code is not None and inner is not None and normalise_code(inner) != normalise_code(code):
            raise ValueError(f"code given twice: {code!r} and declared['code'] {inner!r}")
        code = inner if code is None else code
    return declared, None if code is None or code == "" else normalise_code(code)


def check_arguments(declared: DeclaredFacts | Mapping | None, top_k: int) -> tuple[DeclaredFacts, int]:
    """``declared`` as :class:`DeclaredFacts` and ``top_k``, checked before any photo is decoded.

    Raises:
        ValueError: ``declared`` is not a mapping of known facts with valid values, or ``top_k``
            is not an int >= 1; the message names the argument (and the fact).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if isinstance(declared, DeclaredFacts):
        return declared, top_k
    if declared is not None and not isinstance(declared, Mapping):
        raise ValueError(f"declared must be a dict of facts (or DeclaredFacts), got {type(declared).__name__}")
    try:
        return DeclaredFacts.from_dict(declared), top_k
    except ValueError:
        raise
    except (TypeError, ArithmeticError) as exc:  # e.g. insole_cm=10**400 overflows a float
        field = next((k for k, v in declared.items() if not _fact_ok(k, v)), "declared")
        raise ValueError(f"declared {field}: {exc}") from None


def _fact_ok(name, value) -> bool:
    try:
        DeclaredFacts.from_dict({name: value})
        return True
    except Exception:
        return False


@functools.lru_cache(maxsize=4)
def _cached_classifier(path: str | None, bf16: bool | None, runtime: str | None) -> Classifier:
    return Classifier(path, bf16=bf16, runtime=runtime)


def _as_list(images) -> list:
    if isinstance(images, (str, Path, bytes, bytearray, memoryview, np.ndarray)) or hasattr(images, "getbands"):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    return [images]


def classify_images(images: ImageInput | Sequence[ImageInput], model: str | Path | Classifier | None = None,
                    *, declared: DeclaredFacts | dict | None = None, top_k: int = 5,
                    bf16: bool | None = None, runtime: str | None = None, code: str | None = None) -> ItemResult:
    """Classify the photos of one footwear item.

    Args:
        images: one photo or the M photos of one item: file paths, encoded bytes, PIL images or
            uint8 numpy arrays, in any mix.
        model: a model folder, a loaded :class:`Classifier`, or None for the shipped default.
        declared: facts the declarant states (:class:`~shoeclass.facts.DeclaredFacts` or a dict
            such as ``{"upper_material": "leather", "sole_material": "rubber", "insole_cm": 26}``;
            the names are in ``shoeclass.facts.FACTS``, any of the 13 attributes included);
            every fact is optional, unstated ones are marginalised (materials over the photos'
            material probabilities when the model has material heads). It may also hold the
            declared ``"code"`` to check.
        top_k: tariff candidates kept at each of 4, 6 and 10 digits.
        bf16: force bf16 (True) or fp32 (False); None picks bf16 where the CPU supports it.
        runtime: ``auto`` (default), ``torch``, ``openvino`` or ``onnxruntime`` (see :class:`Classifier`).
        code: a declared 10-digit code (e.g. ``"6404199000"``; the same as ``declared["code"]``):
            ``["check"]`` then says how consistent the photos are with it.

    Returns:
        An :class:`ItemResult`; ``result.to_dict()["attributes"]`` maps every attribute key to
        the item's probability, ``result.to_dict()["photos"][i]`` holds photo i's own values or
        its error, ``["cluster"]`` the cluster and wrong-cluster check, ``["tariff"]`` the ranked
        codes with rationale, missing facts and status, ``["materials"]`` the item's upper and
        sole material probabilities, ``["check"]`` the check of a declared code (see ``result.py``).

    Raises:
        ValueError: bad ``declared`` facts, ``code`` or ``top_k``, raised before any photo is decoded.
            Unreadable or blank photos never raise: they get a per-photo error in the result
            (a blank one: "no shoe in this photo"), and an item with no usable photo gets no
            attributes and no tariff code.

    Example:
        >>> from shoeclass import classify_images
        >>> r = classify_images(["examples/boot_side.jpg", "examples/boot_sole.jpg"])
        >>> r.to_dict()["attributes"]["height_knee"]
    """
    clf = model if isinstance(model, Classifier) else _cached_classifier(
        str(model) if model is not None else None, bf16, runtime)
    return clf.classify(images, declared=declared, top_k=top_k, code=code)
