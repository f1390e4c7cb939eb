"""Fitting the material heads (``shoeclass fit-materials``): text-labelled photos -> heads in a model folder.

1. Weak labels: the product texts of ``texts.csv`` through the keyword rules' material section
   (:mod:`shoeclass.training.material_labels`): upper and sole class, or unknown (masked).
2. Features: every text-labelled photo through the model folder once (the photo embedding
   ``Classifier.predict_tensors`` gives, plus its attribute outputs), cached under ``.cache/``
   keyed by the model's checksum, so heads can be refitted without the trunk.
3. Heads: one softmax per part on the train split (masked cross-entropy, class-balanced), its
   temperature fitted on the val split; written to ``materials.safetensors`` and the
   ``materials`` section of the model card, resealed (see :mod:`shoeclass.materials`).

An ensemble's material tail is tuned before step 2 (:mod:`shoeclass.training.material_tail`), so
the features of step 2 carry its logits, which the heads combine with.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..api import Classifier
from ..data import table_outputs
from ..labels import LabelTable
from ..calibration import SoftmaxTemperature
from ..checkpoint import read_metadata, resolve_path, update_card
from ..materials import MATERIAL_CLASSES, MaterialHeads, PartHead, combine_logits, head_input
from .material_labels import balanced_accuracy, kept_classes, material_labels, read_texts

__all__ = ["read_texts", "material_labels", "feature_cache", "masked_cross_entropy", "balanced_accuracy",
           "kept_classes", "fit_heads", "fit_materials"]

logger = logging.getLogger(__name__)


def _cache_path(clf: Classifier, cache_dir: str | Path) -> Path:
    """One file per model tensors, embedding standardisation (a refit of the item checks changes
    the embeddings the heads read) and runtime (int8 features are not fp32's)."""
    checks = json.dumps(clf.decision.checks.to_dict(), sort_keys=True).encode()
    return Path(cache_dir) / (f"{clf.meta['sha256'][:16]}-{hashlib.sha256(checks).hexdigest()[:8]}-"
                              f"{clf.runtime.name}-{clf.runtime.precision}-v2.npz")


def cached_images(clf: Classifier, cache_dir: str | Path = ".cache/materials") -> set[str]:
    """The photos whose features the cache already holds for this model."""
    path = _cache_path(clf, cache_dir)
    if not path.is_file():
        return set()
    with np.load(path, allow_pickle=False) as z:
        return set(z["image"].tolist())


def feature_cache(clf: Classifier, table: LabelTable, cache_dir: str | Path = ".cache/materials",
                  progress: bool = True, chunk: int = 512) -> dict[str, np.ndarray]:
    """The photo ``embedding`` (N, D) and an ensemble's ``features`` (N, F), float16, and the
    attribute outputs (``logits``, ``gate``, ``suitability``) of every photo of ``table``, in its order, as ``clf.predict_tensors`` gives them.

    One cache file per model checksum in ``cache_dir`` holds every photo computed so far; only
    photos missing from it go through the model, saved after every ``chunk`` photos, so an
    interrupted run resumes and a second labelling of the texts adds only its new photos.
    """
    path = _cache_path(clf, cache_dir)
    cached: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            cached = {k: z[k] for k in z.files}
    known = set(cached.get("image", np.array([], str)).tolist())
    missing = np.flatnonzero([im not in known for im in table.image])
    for start in range(0, len(missing), chunk):
        rows = missing[start:start + chunk]
        new = _compute(clf, table.subset(rows), progress)
        new["image"] = table.image[rows].astype(str)
        cached = new if not cached else {k: np.concatenate([cached[k], new[k]]) for k in new}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **cached)
        tmp.replace(path)
        logger.info("feature cache %s: %d photos", path, len(cached["image"]))
    index = {im: i for i, im in enumerate(cached.get("image", np.array([], str)).tolist())}
    rows = np.array([index[im] for im in table.image], dtype=np.int64)
    return {k: v[rows] for k, v in cached.items() if k != "image"}


def _compute(clf: Classifier, table: LabelTable, progress: bool) -> dict[str, np.ndarray]:
    def run(x: torch.Tensor) -> dict[str, np.ndarray]:
        out = clf.predict_tensors(x)
        if "embedding" not in out:
            raise ValueError(f"{clf.path}: the model gives no photo embedding (runtime {clf.runtime.name}); "
                             f"material heads need the torch runtime and a model with standardised heads")
        res = {k: out[k] for k in ("logits", "gate", "suitability") if k in out}
        res.update({k: out[k].astype(np.float16) for k in ("embedding", "features") if k in out})  # (B, D)
        if "material" in out:
            res["material"] = out["material"]  # (B, K) the material tail's logits
        return res

    logger.info("computing embeddings of %d photos for %s", len(table), clf.path)
    return table_outputs(run, table, clf.preset, batch_size=clf.batch_size, progress=progress,
                         desc="material features")


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the rows whose ``target`` is a class (>= 0); -1 is the mask (the
    text did not say). ``weights`` (K,) reweights classes. 0 when every row is masked."""
    keep = target >= 0
    if not keep.any():
        return logits.sum() * 0.0
    return torch.nn.functional.cross_entropy(logits[keep], target[keep], weight=weights)


def _fit_softmax(x: np.ndarray, t: np.ndarray, k: int, l2: float, epochs: int = 300,
                 balanced: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression (full batch L-BFGS) on standardised features, class-balanced or not."""
    torch.manual_seed(0)
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)
    counts = np.bincount(t[t >= 0], minlength=k).astype(np.float64)
    w_cls = torch.tensor(counts.sum() / (k * np.maximum(counts, 1)), dtype=torch.float32) if balanced else None
    lin = torch.nn.Linear(x.shape[1], k)
    torch.nn.init.zeros_(lin.weight)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = masked_cross_entropy(lin(xt), tt, w_cls) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy()


L2_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # strong: 7,680 features, a few thousand noisy labels


def fit_heads(x: np.ndarray, labels: dict[str, np.ndarray], split: np.ndarray, rho: float,
              min_train: int = 40, l2_grid: tuple[float, ...] = L2_GRID,
              balanced: bool = True, tail: np.ndarray | None = None,
              tail_parts: dict[str, list[str]] | None = None) -> tuple[MaterialHeads, dict]:
    """Fit both parts' heads on the train rows of (N, D) photo embeddings ``x``, choose the L2
    strength by validation balanced accuracy and fit the temperature on validation. ``balanced``
    weighs the classes equally in the loss (else as often as the texts name them). With a material
    tail's (N, K) logits ``tail`` (classes per part ``tail_parts``, as ``kept_classes`` chose them)
    the L2 strength, temperature and metrics are those of the heads combined with it.

    Classes with fewer than ``min_train`` train labels (or none in validation) get no output.
    Returns the heads and a summary (class counts per split, validation and test metrics).

    Raises:
        ValueError: ``tail_parts`` whose classes are not the ones the heads keep."""
    e = np.asarray(x, dtype=np.float32)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)  # as MaterialHeads.standardise
    tr, va, te = (split == s for s in ("train", "val", "test"))
    mu, sigma = e[tr].mean(0), e[tr].std(0) + 1e-6
    heads = MaterialHeads({}, mu, sigma, tail=tail_parts if tail is not None else None)
    z = heads.standardise(e)
    tails = heads.split_tail(tail, len(z))
    parts, summary = {}, {"counts": {}, "val": {}, "test": {}, "l2": {}}
    for part, lab in labels.items():
        names = MATERIAL_CLASSES[part]
        summary["counts"][part] = {s: {names[c]: int((lab[split == s] == c).sum()) for c in range(len(names))}
                                   for s in ("train", "val", "test")}
        keep = kept_classes(lab, split, min_train)
        if len(keep) < 2:
            logger.warning("%s: fewer than two classes with %d train labels; no head", part, min_train)
            continue
        if tails and list(heads.tail.get(part, ())) != [names[c] for c in keep]:
            raise ValueError(f"the material tail's {part} classes {heads.tail.get(part)} are not the heads' "
                             f"{[names[c] for c in keep]}: tune the tail on the same labels")

        def scores(rows: np.ndarray, w: np.ndarray, b: np.ndarray, tp=tails.get(part)) -> np.ndarray:
            """What ``PartHead.logits`` computes (with the tail's logits when given)."""
            return combine_logits(z[rows] @ w + b, None if tp is None else tp[rows])

        remap = np.full(len(names) + 1, -1)
        remap[keep] = np.arange(len(keep))
        t = remap[lab]  # -1: masked or a class without an output
        best = None
        for l2 in l2_grid:
            w, b = _fit_softmax(z[tr], t[tr], len(keep), l2, balanced=balanced)
            pred = scores(va, w, b).argmax(1)
            score = balanced_accuracy(pred[t[va] >= 0], t[va][t[va] >= 0], list(range(len(keep))))
            logger.info("%s l2=%g val balanced accuracy %.4f", part, l2, score)
            if best is None or score > best[0]:
                best = (score, l2, w, b)
        score, l2, w, b = best
        temp = SoftmaxTemperature().fit(scores(va, w, b), t[va]).temperature_
        counts = np.bincount(t[tr][t[tr] >= 0], minlength=len(keep)).astype(np.float64)
        parts[part] = PartHead(part, tuple(names[c] for c in keep), w, b, float(temp), counts / counts.sum(), rho)
        summary["l2"][part] = l2
        summary["val"][part] = {"balanced_accuracy": round(score, 4)}
        pt = scores(te, w, b).argmax(1)
        known = t[te] >= 0
        if known.any():
            summary["test"][part] = {"balanced_accuracy": round(balanced_accuracy(
                pt[known], t[te][known], [c for c in range(len(keep)) if (t[te] == c).any()]), 4)}
    heads.parts = parts
    return heads, summary


def fit_materials(model: str | Path | None, data: str | Path, cache_dir: str | Path = ".cache/materials",
                  progress: bool = True, max_train: int | None = None, min_train: int = 40,
                  balanced: bool = True, tail_epochs: int = 15) -> dict:
    """Fit the material heads of a model folder and store them there (``materials.safetensors``
    and the ``materials`` section of its card, resealed); returns that section plus its ``path``.
    ``max_train`` fits on at most that many train photos (CPU budget: those already in the feature
    cache first, then a fixed pseudo-random order); ``min_train`` is the fewest train labels a
    class needs to get an output.

    First, for an ensemble with ``tail_epochs`` > 0, its material tail is tuned on the same photos
    (:mod:`shoeclass.training.material_tail`) and its int8 graph, if it had one, made again
    (``shoeclass quantize``, from ``data``'s validation photos); ``tail_epochs=0`` keeps the
    model's tail as it is (or none). The heads then combine with the tail's logits.

    Raises:
        FileNotFoundError: no texts.csv in ``data``.
    """
    tail_summary, meta = None, read_metadata(model)
    if tail_epochs and "ensemble" in meta:
        from .material_tail import tune_material_tail
        from .quantize import quantize_model

        had_int8 = bool(meta.get("int8"))
        tail_summary = tune_material_tail(model, data, epochs=tail_epochs, min_train=min_train, progress=progress)
        if had_int8:
            quantize_model(resolve_path(model), data)
    clf = Classifier(model, materials=False)  # the default runtime: the embeddings inference will read
    table, labels = material_labels(data)
    if max_train is not None:  # CPU budget: photos already cached first, then others in a fixed order
        cached = cached_images(clf, cache_dir)
        train = np.flatnonzero(table.split == "train")
        order = sorted(train, key=lambda i: (table.image[i] not in cached,
                                             hashlib.sha1(table.image[i].encode()).hexdigest()))
        drop = np.zeros(len(table), bool)
        drop[order[max_train:]] = True
        table, labels = table.subset(~drop), {k: v[~drop] for k, v in labels.items()}
    out = feature_cache(clf, table, cache_dir, progress)
    fusion = (clf.meta.get("decision") or {}).get("fusion")
    # The attributes' photo correlation (median over outputs): the same photos, the same dependence.
    rho = float(np.median(fusion["rho"])) if fusion else 1.0
    spec = (clf.meta.get("ensemble") or {}).get("material_tail")
    heads, summary = fit_heads(head_input(out), labels, table.split, rho, min_train=min_train, balanced=balanced,
                               tail=out.get("material") if spec else None, tail_parts=spec["parts"] if spec else None)
    heads.info = {"model_sha256": clf.meta["sha256"], "data": Path(data).name, "photos": int(len(table)),
                  "train_photos": int((table.split == "train").sum()), "max_train": max_train, "balanced": balanced,
                  "rules": "configs/keywords.yaml materials", "metrics": summary}
    if tail_summary is not None:
        heads.info["tail_training"] = tail_summary
    section = heads.save(clf.path)
    update_card(clf.path, {"materials": section})
    logger.info("material heads written to %s", clf.path)
    return {**section, "path": str(clf.path)}
