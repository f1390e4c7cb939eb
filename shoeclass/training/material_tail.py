"""Tuning the material tail of an ensemble (``shoeclass fit-materials``, step 1; issue 16).

The photo embedding comes from the untuned ImageNet tail of an ensemble (``models.EnsembleNet``).
A copy of that tail from block ``first`` on learns the text-labelled materials
(``training.materials.material_labels``) and becomes the network's ``material`` output
(``models.MaterialTail``), read together with the material heads:

1. Maps: every labelled photo and its mirror image through the frozen stem and the reference's
   blocks up to ``first``, once (float16, in memory: 7,542 photos at block 11 take 0.7 GB).
2. Tuning: the copy's 1×1 convolutions learn a rank-``rank`` delta (their ImageNet weights stay),
   its batch-norm scales and shifts and a new output layer learn freely; batch-norm statistics stay
   the ImageNet ones. Class-balanced cross-entropy per part, masked where the text says nothing;
   a photo or its mirror at random each step; AdamW with a one-cycle schedule peaking at ``lr``
   (10 × ``lr`` for the new output layer; with 2e-3 throughout the deltas diverged in 4 epochs). The epoch with the
   best validation balanced accuracy of the upper (the part that decides the heading) is kept.
3. The model folder gets the tail (``model.safetensors`` and ``ensemble.material_tail`` of its
   card); its int8 graph and material heads, made from the model without it, are dropped from the
   card (``fit_materials`` makes them again).

Measured choices (BENCHMARKS.md, issue 16): rank 16 from block 11 (the folder stays under 50 MB), 15
epochs, lr 2e-4.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
from tqdm.auto import tqdm

from ..api import Classifier
from ..checkpoint import save_checkpoint
from ..data import table_outputs
from ..materials import MATERIAL_CLASSES, split_by_part
from ..models import EnsembleNet, MaterialTail
from .material_labels import balanced_accuracy, kept_classes, material_labels

__all__ = ["tune_material_tail"]

logger = logging.getLogger(__name__)


class _LowRank(nn.Module):
    """A weight plus the product ``b @ a`` (``b`` starts at zero: the copy starts untuned)."""

    def __init__(self, out_ch: int, in_ch: int, rank: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, in_ch) / in_ch ** 0.5)
        self.b = nn.Parameter(torch.zeros(out_ch, rank))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.b @ self.a).view_as(w)


def tune_material_tail(model: str | Path | None, data: str | Path, *, first: int | None = None, rank: int = 16,
                       epochs: int = 15, lr: float = 2e-4, batch: int = 64, seed: int = 0,
                       min_train: int = 40, progress: bool = True) -> dict:
    """Tune a material tail on ``data``'s text-labelled photos and write it into the model folder.
    ``first``: the tail's first block (None: block 11, or the first block the members tune if later).

    Returns:
        A summary: ``first``, ``rank``, the classes per part, the kept ``epoch``, the validation and
        test balanced accuracy per part, the seconds taken.

    Raises:
        ValueError: the model is not an ensemble with a reference trunk, or the texts label fewer
            than two classes of the upper with ``min_train`` train photos.
        FileNotFoundError: no texts.csv in ``data``.
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clf = Classifier(model, runtime="torch", materials=False)
    net = clf.net
    if not isinstance(net, EnsembleNet) or net.reference is None:
        raise ValueError(f"{clf.path}: a material tail branches off an ensemble's reference trunk; this model has none")
    table, labels = material_labels(data)
    split = np.asarray(table.split)
    keep = {part: kept_classes(labels[part], split, min_train) for part in MATERIAL_CLASSES}
    keep = {part: k for part, k in keep.items() if len(k) >= 2}
    if "upper" not in keep:
        raise ValueError(f"{data}: fewer than two upper classes with {min_train} text-labelled train photos")
    parts = {part: [MATERIAL_CLASSES[part][c] for c in k] for part, k in keep.items()}
    targets = {}
    for part, k in keep.items():  # class index within the part's outputs, -1 masked
        remap = np.full(len(MATERIAL_CLASSES[part]) + 1, -1)
        remap[k] = np.arange(len(k))
        targets[part] = torch.from_numpy(remap[labels[part]])

    ref = net.reference
    first = max(11, ref.cut) if first is None else first
    maps = _maps(clf, table, first, progress)  # (N, 2, C, h, w) float16
    tail = MaterialTail(ref, first, parts, rank).train()
    tail.requires_grad_(False)
    for name, conv in tail.pointwise().items():
        parametrize.register_parametrization(conv, "weight", _LowRank(conv.out_channels, conv.in_channels, rank))
    own = MaterialTail(ref, first, parts, rank).own_names()
    body = [p for n, p in tail.named_parameters()
            if (n in own and not n.startswith("out.")) or n.endswith((".a", ".b"))]
    for p in [*body, *tail.out.parameters()]:
        p.requires_grad_(True)
    train = np.flatnonzero(split == "train")
    steps = epochs * int(np.ceil(len(train) / batch))
    groups = [{"params": body, "lr": lr}, {"params": list(tail.out.parameters()), "lr": 10 * lr}]  # new outputs: faster
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, 10 * lr], total_steps=steps, pct_start=0.15)
    weights = {part: _balanced_weights(t[train]) for part, t in targets.items()}
    best: tuple[float, dict] | None = None
    bar = tqdm(range(1, epochs + 1), desc="material tail", unit="epoch", disable=not progress)
    for epoch in bar:
        tail.train()
        for mod in tail.modules():  # ImageNet batch-norm statistics
            if isinstance(mod, nn.BatchNorm2d):
                mod.eval()
        order = rng.permutation(train)
        for i in range(0, len(order), batch):
            rows = torch.from_numpy(order[i:i + batch])
            view = torch.from_numpy(rng.integers(0, 2, len(rows)))
            logits = split_by_part(tail(maps[rows, view].float()), parts)
            loss = sum(nn.functional.cross_entropy(logits[p], targets[p][rows], weight=weights[p], ignore_index=-1)
                       for p in parts if (targets[p][rows] >= 0).any())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        scores = {s: _scores(tail, maps, targets, parts, split == s) for s in ("val", "test")}
        logger.info("material tail epoch %d: val %s, test %s", epoch, scores["val"], scores["test"])
        bar.set_postfix(val_upper=scores["val"]["upper"])
        if best is None or scores["val"]["upper"] > best[0]:
            best = (scores["val"]["upper"], {"epoch": epoch, **scores})
            stored = _stored(tail, own)
    final = MaterialTail(ref, first, parts, rank, stored).eval()
    meta = {k: v for k, v in clf.meta.items() if k not in ("int8", "materials")}  # made from the model without it
    save_checkpoint(EnsembleNet(list(net.members), net.flip, ref, final), clf.path, meta)
    summary = {"first": first, "rank": rank, "parts": parts, **best[1], "photos": int(len(table)),
               "seconds": round(time.perf_counter() - t0, 1)}
    logger.info("material tail written to %s: %s", clf.path, summary)
    return summary


def _maps(clf: Classifier, table, first: int, progress: bool) -> torch.Tensor:
    """(N, 2, C, h, w) float16: each photo's and its mirror's map entering block ``first``."""
    ref, stem = clf.net.reference, clf.net.members[0].trunk

    def run(x: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            h = ref.blocks(stem.stem(torch.cat([x, x.flip(3)])), ref.cut, first)
        n = len(x)
        return {"maps": torch.stack([h[:n], h[n:]], 1).to(torch.float16).numpy()}

    return torch.from_numpy(table_outputs(run, table, clf.preset, batch_size=clf.batch_size, progress=progress,
                                          desc="material tail maps")["maps"])


def _balanced_weights(t: torch.Tensor) -> torch.Tensor:
    known = t[t >= 0]
    counts = torch.bincount(known, minlength=int(known.max()) + 1).float()
    return len(known) / (len(counts) * counts.clamp(min=1))


@torch.no_grad()
def _scores(tail: MaterialTail, maps: torch.Tensor, targets: dict, parts: dict, sel: np.ndarray) -> dict[str, float]:
    """Balanced accuracy per part over the classes with >= 10 photos of ``sel`` (both views' logits averaged)."""
    tail.eval()
    rows = np.flatnonzero(sel)
    chunks = [torch.from_numpy(r) for r in np.array_split(rows, max(1, len(rows) // 256))]
    logits = torch.cat([(tail(maps[r, 0].float()) + tail(maps[r, 1].float())) / 2 for r in chunks])
    out = {}
    for part, lg in split_by_part(logits, parts).items():
        t = targets[part][rows].numpy()
        known = t >= 0
        classes = [c for c in range(len(parts[part])) if (t[known] == c).sum() >= 10]
        pred = lg.argmax(1).numpy()[known]
        out[part] = round(balanced_accuracy(pred, t[known], classes), 4) if classes else float("nan")
    return out


def _stored(tail: nn.Module, own: list[str]) -> dict[str, torch.Tensor]:
    """The tuned tensors as ``MaterialTail(stored=...)`` takes them: each 1×1 convolution's ``a``
    and ``b``, the batch-norm affines and the outputs."""
    state = {n: p.detach().clone() for n, p in tail.named_parameters()}
    out = {n: state[n] for n in own}
    for name, conv in tail.pointwise().items():
        delta = conv.parametrizations.weight[0]
        out[f"{name}.a"], out[f"{name}.b"] = delta.a.detach().clone(), delta.b.detach().clone()
    return out
