"""Importing a local folder of photos (a photo stock, a supplier catalogue) as a labelled dataset.

Folder names carry the labels through the same keyword rules as shop text:
``SRC/Обувь/Сапоги/Ботфорты/0001.jpg`` is labelled from "Обувь > Сапоги > Ботфорты" (and, unless
photos are grouped by folder, the file name). With ``group_by_folder`` every leaf folder is one
product (``SRC/boots/sku123/{front,side}.jpg``), otherwise every file is its own item.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import PhotoRecord
from .keywords import KeywordRules
from .store import PhotoSink

__all__ = ["IMAGE_SUFFIXES", "ImportResult", "import_folder"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass
class ImportResult:
    """Counts of one import."""

    photos: int = 0
    items: int = 0
    unlabelled: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


def import_folder(src: str | Path, out_dir: str | Path, *, keywords: str | Path | None = None,
                  source: str | None = None, group_by_folder: bool = False, min_side: int = 100,
                  max_side: int = 512) -> ImportResult:
    """Copy the photos under ``src`` into the dataset folder ``out_dir`` with weak labels.

    Args:
        src: the folder to import (walked recursively, in sorted order).
        out_dir: the dataset folder (created; an existing one is extended).
        keywords: keyword rules YAML (default ``configs/keywords.yaml``).
        source: the ``source`` column (default: the name of ``src``).
        group_by_folder: all photos of one folder are one item.

    Raises:
        NotADirectoryError: ``src`` is not a folder.

    Example:
        >>> import_folder("stock/", "data/stock", group_by_folder=True)  # doctest: +SKIP
    """
    src = Path(src)
    if not src.is_dir():
        raise NotADirectoryError(f"{src}: not a folder")
    source = source or re.sub(r"\W+", "_", src.resolve().name).strip("_") or "folder"
    rules = KeywordRules.from_yaml(keywords)
    sink = PhotoSink(out_dir, min_side=min_side, max_side=max_side)
    result = ImportResult()
    items: set[str] = set()
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for path in files:
        rel = path.relative_to(src)
        category = " > ".join(rel.parent.parts)
        title = "" if group_by_folder else re.sub(r"[\d_]+", " ", path.stem)
        labelling = rules.label(category, title)
        if not labelling.informative:
            result.unlabelled.append(rel.as_posix())
            continue
        item = f"{source}:{(rel.parent if group_by_folder else rel).as_posix()}"
        record = PhotoRecord("", item, source, category, labelling.values,
                             url=f"file:{rel.as_posix()}", title=title.strip(),
                             rules="|".join(labelling.rules))
        if sink.add(path.read_bytes(), f"{source}/{rel.as_posix()}", record):
            result.photos += 1
            items.add(item)
    if result.unlabelled:
        logger.warning("%d photos whose folder names the keyword rules cannot label were skipped, "
                       "e.g. %s", len(result.unlabelled), result.unlabelled[0])
    sink.close()
    result.items, result.dropped = len(items), dict(sink.dropped)
    logger.info("%s: %d photos of %d items imported into %s", src, result.photos, result.items, out_dir)
    return result
