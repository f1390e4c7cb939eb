"""Shared fixtures: a tiny synthetic dataset in the labels.csv format (no ../shared, no network)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shoeclass.assets import load_scraper
from shoeclass.attributes import ATTRIBUTE_KEYS

load_scraper()  # the tests import shoeclass_scraper, installed or (in a checkout) the scraper/ folder
# The tests' many small models run on PyTorch: under the default runtime ("auto") each would be
# exported to ONNX first. tests/test_export.py checks the default runtime itself.
os.environ.setdefault("SHOECLASS_RUNTIME", "torch")

HEADER = ["image", "item", "source", "src_class", "split", "origin", "not_footwear", *ATTRIBUTE_KEYS]


def _photo(kind: int, rng: np.random.Generator) -> Image.Image:
    """A white-background drawing: boots are tall dark blocks, sandals thin strips, others bags."""
    img = Image.new("RGB", (160, 120), "white")
    d = ImageDraw.Draw(img)
    j = rng.integers(-8, 8, size=4)
    if kind == 0:  # tall boot
        d.rectangle([60 + j[0], 10 + j[1], 95 + j[2], 100], fill=(60, 40, 20))
        d.rectangle([40 + j[3], 85, 110, 105], fill=(30, 20, 10))
    elif kind == 1:  # sandal of straps
        for y in range(70, 100, 9):
            d.line([40 + j[0], y, 120 + j[1], y], fill=(200, 120, 40), width=3)
        d.rectangle([35, 100, 125, 106], fill=(90, 60, 30))
    else:  # not footwear
        d.ellipse([30 + j[0], 20 + j[1], 130 + j[2], 100 + j[3]], fill=(20, 90, 200))
    return img


def make_dataset(root: Path, n: int = 36, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        kind = i % 3
        name = f"images/p{i:03d}.jpg"
        _photo(kind, rng).save(root / name, quality=90)
        lab = {k: 0.0 for k in ATTRIBUTE_KEYS}
        if kind == 0:
            lab.update(height_knee=1.0)
        elif kind == 1:
            lab.update(vamp_straps=1.0, height_low=1.0, high_heel=0.5)
        else:
            lab = {k: 0.5 for k in ATTRIBUTE_KEYS}
        split = "train" if i < n * 2 // 3 else ("val" if i < n * 5 // 6 else "test")
        rows.append({"image": name, "item": f"item{i}", "source": "synthetic", "src_class": str(kind),
                     "split": split, "origin": "eye", "not_footwear": int(kind == 2), **lab})
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, HEADER)
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session", autouse=True)
def _runtime_env(tmp_path_factory):
    """ONNX exports go to a temporary cache, never the user's; tests of what surrounds the network
    run it with PyTorch (one export per tiny model would cost seconds each). The runtimes themselves
    are tested in test_export.py and on the example photos, which pass ``runtime`` explicitly."""
    import os

    saved = {k: os.environ.get(k) for k in ("SHOECLASS_CACHE", "SHOECLASS_RUNTIME")}
    os.environ["SHOECLASS_CACHE"] = str(tmp_path_factory.mktemp("shoeclass_cache"))
    os.environ["SHOECLASS_RUNTIME"] = "torch"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
