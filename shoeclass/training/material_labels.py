"""The weak material labels of a data folder: its product texts (``texts.csv``) through the keyword
rules' material section (``configs/keywords.yaml``, ``scraper.keywords``), and the measures the
material heads and tail are chosen by. Shared by :mod:`shoeclass.training.materials` (the heads)
and :mod:`shoeclass.training.material_tail` (the tail).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..assets import load_scraper
from ..attributes import OUTPUT_KEYS
from ..labels import LabelTable, read_labels
from ..materials import MATERIAL_CLASSES

__all__ = ["read_texts", "material_labels", "balanced_accuracy", "kept_classes"]


def read_texts(data: str | Path) -> dict[str, str]:
    """``texts.csv`` of a data folder: image path -> product text.

    Raises:
        FileNotFoundError: no texts.csv in ``data``.
    """
    path = Path(data) / "texts.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no texts.csv; the material heads learn from product texts")
    with path.open(encoding="utf-8", newline="") as fh:
        return {row["image"]: row["text"] or "" for row in csv.DictReader(fh)}


def material_labels(data: str | Path, rules=None) -> tuple[LabelTable, dict[str, np.ndarray]]:
    """The footwear photos of ``data`` whose product text names a material, and their weak labels:
    per part (``upper``, ``sole``) an (N,) array of class indices into ``MATERIAL_CLASSES[part]``,
    -1 where the text does not say (the mask)."""
    rules = rules or load_scraper("keywords").KeywordRules.from_yaml()
    table = read_labels(data, check_images=False)
    texts = read_texts(data)
    footwear = table.y[:, OUTPUT_KEYS.index("not_footwear")] != 1.0
    labels = {part: np.full(len(table), -1, np.int64) for part in MATERIAL_CLASSES}
    for i, image in enumerate(table.image):
        if footwear[i] and image in texts:
            found, _ = rules.materials(texts[image])
            for part, cls in found.items():
                if cls is not None:
                    labels[part][i] = MATERIAL_CLASSES[part].index(cls)
    keep = np.any([v >= 0 for v in labels.values()], axis=0)
    return table.subset(keep), {part: v[keep] for part, v in labels.items()}


def balanced_accuracy(pred: np.ndarray, true: np.ndarray, classes: list[int]) -> float:
    """Mean recall over ``classes`` (rows of other true classes are ignored)."""
    return float(np.mean([(pred[true == c] == c).mean() for c in classes]))


def kept_classes(lab: np.ndarray, split: np.ndarray, min_train: int = 40) -> list[int]:
    """The classes of one part that get an output: ``min_train`` or more train labels and at
    least one in validation (indices into ``MATERIAL_CLASSES[part]``)."""
    tr, va = split == "train", split == "val"
    return [c for c in range(int(lab.max(initial=-1)) + 1)
            if (lab[tr] == c).sum() >= min_train and (lab[va] == c).any()]
