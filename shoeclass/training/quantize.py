"""The int8 graph of a model folder, calibrated on its validation photos (``shoeclass quantize``).

Static post-training quantization fixes every activation's int8 range from photos run through the
network, so it is done once, here, where the labelled photos are: ``photos`` drawn at random from
the ``split`` of a labels.csv folder, preprocessed as the model preprocesses, fix the ranges of the
model's ONNX export (``export.quantize_onnx``). The graph is written into the model folder as
``model.int8.onnx`` and its sha256, the model's sha256 and the calibration are sealed in the card's
``int8`` section (``checkpoint.update_card``); OpenVINO runs it where the card has it
(``backends.load_runtime``). What it changes against fp32: ``benchmarks/runtimes.py``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..checkpoint import INT8_FILE, file_sha256, load_checkpoint, resolve_path, update_card
from ..data import EvalPreset
from ..export import EXPORT_VERSION, cached_onnx, quantize_onnx
from ..images import load_image
from ..labels import read_labels

__all__ = ["quantize_model"]

logger = logging.getLogger(__name__)


def quantize_model(model: str | Path, data: str | Path, photos: int = 512, split: str = "val",
                   seed: int = 0) -> dict:
    """Write ``model.int8.onnx`` into a model folder and seal it in the card.

    Args:
        model: the model folder (its card is rewritten; the tensors are untouched).
        data: a labels.csv folder whose ``split`` photos calibrate the activation ranges.
        photos: how many of them, drawn at random with ``seed``.

    Returns:
        The card's new ``int8`` section.

    Raises:
        ValueError: the split has no photos.
    """
    folder = resolve_path(model)
    net, meta = load_checkpoint(folder)
    table = read_labels(data)
    pool = np.flatnonzero(table.split == split)
    if not len(pool):
        raise ValueError(f"{data}: no {split!r} photos in labels.csv to calibrate the int8 graph")
    rows = np.sort(np.random.default_rng(seed).choice(pool, min(photos, len(pool)), replace=False))
    pre = meta["preprocessing"]
    preset = EvalPreset(meta["backbone"], tuple(pre["mean"]), tuple(pre["std"]))
    paths = np.asarray(table.paths(), dtype=object)[rows]
    x = np.stack([preset(load_image(p)).numpy() for p in paths])
    t0 = time.perf_counter()
    tmp = folder / (INT8_FILE + ".tmp")
    try:
        quantize_onnx(cached_onnx(net, meta), x, tmp)
        tmp.replace(folder / INT8_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    (folder / INT8_FILE).chmod(0o644)
    section = {"file": INT8_FILE, "sha256": file_sha256(folder / INT8_FILE), "model_sha256": meta["sha256"],
               "export_version": EXPORT_VERSION,
               "calibration": {"split": split, "photos": int(len(rows)), "seed": seed, "ranges": "min-max"}}
    update_card(folder, {"int8": section})
    logger.info("int8 graph written to %s in %.0f s", folder / INT8_FILE, time.perf_counter() - t0)
    return section
