"""Keeping photos: duplicate bookkeeping shared by all paths, and a sink for the non-Scrapy ones.

``Deduplicator`` remembers every kept photo by content (SHA-1 of the original bytes) and look
(dHash), seeded from the ``provenance.csv`` of an existing dataset folder, so a photo seen in an
earlier run or on another product is not kept twice. ``PhotoSink`` is what ``simple.py`` and
``folder_import.py`` write through: load (``shoeclass.images.load_image``) → de-duplicate → JPEG → ``DatasetWriter``.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from PIL import Image

from .dataset import DatasetWriter, PhotoRecord
from shoeclass.images import ImageError, load_image

from .imaging import PerceptualIndex, dhash, encode_jpeg, sha1_bytes

__all__ = ["Deduplicator", "PhotoSink"]

logger = logging.getLogger(__name__)


class Deduplicator:
    """Which kept photo (if any) a new photo duplicates.

    Args:
        max_distance: dHash bits two photos may differ by and still count as one.
    """

    def __init__(self, max_distance: int = 4) -> None:
        self.index = PerceptualIndex(max_distance)
        self.by_sha1: dict[str, str] = {}  # sha1 of the original bytes → kept path
        self.owner: dict[str, str] = {}  # kept path → item id

    def seed(self, out_dir: Path) -> "Deduplicator":
        """Remember the photos already listed in ``out_dir/provenance.csv``."""
        prov = out_dir / "provenance.csv"
        if prov.is_file():
            with prov.open(newline="", encoding="utf-8") as fh:
                for r in csv.DictReader(fh):
                    if r.get("dhash"):
                        self.keep(r["image"], r.get("sha1", ""), int(r["dhash"], 16), r["item"])
            logger.info("de-duplicating against %d photos already in %s", len(self.owner), out_dir)
        return self

    def duplicate_of(self, path: str, sha1: str, dh: int, item: str) -> str | None:
        """A reason string when the photo duplicates a kept one, else None."""
        owner = self.owner.get(path)
        if owner is not None and owner != item:
            return f"same URL as a photo of {owner}"
        if self.by_sha1.get(sha1, path) != path:
            return f"same bytes as {self.by_sha1[sha1]}"
        near = self.index.find(dh)
        if near not in (None, path):
            return f"near duplicate (dHash) of {near}"
        return None

    def keep(self, path: str, sha1: str, dh: int, item: str) -> None:
        """Record a kept photo."""
        if path not in self.owner:
            self.index.add(dh, path)
        if sha1:
            self.by_sha1[sha1] = path
        self.owner[path] = item


class PhotoSink:
    """Stores photos into a dataset folder for the BeautifulSoup and folder-import paths.

    Args:
        out_dir: the dataset folder (created; an existing one is extended).
        min_side: photos with a side shorter than this are dropped.
        max_side: longer photos are shrunk to this longer side.
        max_distance: dHash distance for near duplicates.
    """

    def __init__(self, out_dir: str | Path, *, min_side: int = 100, max_side: int = 512,
                 max_distance: int = 4) -> None:
        self.out_dir = Path(out_dir)
        self.min_side, self.max_side = min_side, max_side
        self.writer = DatasetWriter(self.out_dir)
        self.dedup = Deduplicator(max_distance).seed(self.out_dir)
        self.dropped: dict[str, int] = {"broken": 0, "small": 0, "duplicate": 0}

    def add(self, data: bytes, key: str, record: PhotoRecord) -> bool:
        """Store one photo (``data``: encoded bytes, ``key``: its URL or source path).

        ``record.image``, ``sha1`` and ``dhash`` are filled in here. Returns False when dropped.
        """
        try:
            img = load_image(data, key)  # the library's loader: size and bomb guards, upright RGB
        except ImageError as exc:
            logger.warning("%s, dropped", exc)
            self.dropped["small" if exc.problem.startswith("image too small") else "broken"] += 1
            return False
        if min(img.size) < self.min_side:
            logger.warning("%s: too small (%dx%d), dropped", key, *img.size)
            self.dropped["small"] += 1
            return False
        if max(img.size) > self.max_side:
            img.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
        path = f"images/{record.source}/{sha1_bytes(key.encode('utf-8'))}.jpg"
        sha1, dh = sha1_bytes(data), dhash(img)
        reason = self.dedup.duplicate_of(path, sha1, dh, record.item)
        if reason:
            logger.info("%s: duplicate photo dropped (%s)", key, reason)
            self.dropped["duplicate"] += 1
            return False
        self.dedup.keep(path, sha1, dh, record.item)
        (self.out_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (self.out_dir / path).write_bytes(encode_jpeg(img))
        record.image, record.sha1, record.dhash = path, sha1, f"{dh:016x}"
        self.writer.add(record)
        return True

    def close(self) -> Path:
        """Write labels.csv and provenance.csv; returns the labels path."""
        return self.writer.write()
