"""Reading a labels.csv dataset folder (the format of shared/data) into arrays."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .attributes import ATTRIBUTE_KEYS, NOT_FOOTWEAR, OUTPUT_KEYS

__all__ = ["LabelsError", "LabelTable", "read_labels", "META_COLUMNS"]

META_COLUMNS = ("image", "item", "source", "src_class", "split", "origin")


class LabelsError(ValueError):
    """A labels.csv that cannot be trained on: names the file, line and column."""


@dataclass
class LabelTable:
    """One row per photo. ``y`` is (N, 14): the 13 attributes then not_footwear; 0.5 is a mask."""

    root: Path
    image: np.ndarray  # (N,) relative paths
    item: np.ndarray
    source: np.ndarray
    split: np.ndarray
    origin: np.ndarray
    y: np.ndarray  # (N, 14) float32

    def __len__(self) -> int:
        return len(self.image)

    def paths(self) -> list[Path]:
        return [self.root / p for p in self.image]

    def subset(self, mask: np.ndarray) -> "LabelTable":
        return LabelTable(self.root, self.image[mask], self.item[mask], self.source[mask],
                          self.split[mask], self.origin[mask], self.y[mask])


def read_labels(path: str | Path) -> LabelTable:
    """Read ``labels.csv`` (or a folder holding it); image paths are relative to its folder.

    Raises:
        LabelsError: a missing column or a value other than 0 / 0.5 / 1.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "labels.csv"
    if not path.is_file():
        raise LabelsError(f"{path}: no such file (a dataset folder holds labels.csv)")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in META_COLUMNS + OUTPUT_KEYS if c not in (reader.fieldnames or [])]
        if missing:
            raise LabelsError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    cols = {c: np.array([r[c] for r in rows], dtype=object) for c in META_COLUMNS}
    y = np.empty((len(rows), len(OUTPUT_KEYS)), dtype=np.float32)
    for i, r in enumerate(rows):
        for j, key in enumerate(OUTPUT_KEYS):
            try:
                v = float(r[key])
            except (TypeError, ValueError):
                v = -1.0
            if v not in (0.0, 0.5, 1.0):
                raise LabelsError(f"{path}: line {i + 2}, column {key}: {r[key]!r} is not 0, 0.5 or 1")
            y[i, j] = v
    return LabelTable(path.parent, cols["image"], cols["item"], cols["source"], cols["split"],
                      cols["origin"], y)
