"""Writing a dataset folder in the labels.csv format of shared/data, plus provenance.csv.

``labels.csv``: ``image,item,source,src_class,split,origin,not_footwear,<13 attributes>``; image
paths are relative to the folder; ``origin`` is ``class`` (labels implied by shop text, not seen by
eye). ``provenance.csv``: where each photo came from (URL, page, date, site, fired rules, hashes).
The split is fixed by a hash of the ITEM id, so all photos of one product share a split.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from shoeclass.attributes import ATTRIBUTE_KEYS, MASK, NOT_FOOTWEAR
from shoeclass.labels import META_COLUMNS

__all__ = ["LABEL_COLUMNS", "PROVENANCE_COLUMNS", "PhotoRecord", "DatasetWriter", "split_for_item",
           "format_value", "utc_now"]

logger = logging.getLogger(__name__)

LABEL_COLUMNS: tuple[str, ...] = META_COLUMNS + (NOT_FOOTWEAR.key,) + ATTRIBUTE_KEYS


@dataclass
class PhotoRecord:
    """One photo: its labels row and its provenance row share ``image``."""

    image: str  # path relative to the dataset folder
    item: str
    source: str
    src_class: str
    labels: dict[str, float]
    url: str = ""
    page_url: str = ""
    date: str = ""
    title: str = ""
    rules: str = ""
    sha1: str = ""
    dhash: str = ""


PROVENANCE_COLUMNS: tuple[str, ...] = ("image", "item", "url", "page_url", "date", "site", "title",
                                       "rules", "sha1", "dhash")


def split_for_item(item: str) -> str:
    """``train`` / ``val`` / ``test`` (≈ 80/10/10) from a stable hash of the item id."""
    bucket = int(hashlib.sha1(item.encode("utf-8")).hexdigest()[:8], 16) % 100  # noqa: S324
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


def format_value(v: float) -> str:
    """0 → "0", 1 → "1", 0.5 → "0.5" (as in shared/data)."""
    return "0.5" if v == MASK else str(int(v))


def utc_now() -> str:
    """ISO-8601 UTC timestamp, seconds precision."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class DatasetWriter:
    """Collects photo records for one dataset folder and writes both CSV files.

    An existing folder is extended: its rows are read first and kept (a photo already listed is
    replaced by a new record for the same image path).

    Example:
        >>> w = DatasetWriter("out")                                     # doctest: +SKIP
        >>> w.add(PhotoRecord("images/a.jpg", "shop:1", "shop", "Boots", labels))  # doctest: +SKIP
        >>> w.write()                                                    # doctest: +SKIP
    """

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.records: dict[str, PhotoRecord] = {}
        self._load()

    def _load(self) -> None:
        labels, prov = self.out_dir / "labels.csv", self.out_dir / "provenance.csv"
        if not labels.is_file():
            return
        provenance: dict[str, dict[str, str]] = {}
        if prov.is_file():
            with prov.open(newline="", encoding="utf-8") as fh:
                provenance = {r["image"]: r for r in csv.DictReader(fh)}
        with labels.open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                p = provenance.get(r["image"], {})
                values = {k: float(r[k]) for k in (NOT_FOOTWEAR.key,) + ATTRIBUTE_KEYS}
                self.records[r["image"]] = PhotoRecord(
                    r["image"], r["item"], r["source"], r["src_class"], values,
                    **{f.name: p.get(f.name, "") for f in fields(PhotoRecord)
                       if f.name in PROVENANCE_COLUMNS and f.name not in ("image", "item")})
        logger.info("%s: extending %d existing rows", labels, len(self.records))

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: PhotoRecord) -> None:
        """Add (or replace) the record for ``record.image``."""
        if not record.date:
            record.date = utc_now()
        self.records[record.image] = record

    def items(self) -> set[str]:
        """Item ids present."""
        return {r.item for r in self.records.values()}

    def write(self) -> Path:
        """Write ``labels.csv`` and ``provenance.csv`` (atomically); returns the labels path."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = sorted(self.records.values(), key=lambda r: (r.item, r.image))
        label_rows = [[r.image, r.item, r.source, r.src_class, split_for_item(r.item), "class"]
                      + [format_value(r.labels[k]) for k in LABEL_COLUMNS[len(META_COLUMNS):]]
                      for r in rows]
        prov_rows = [[asdict(r).get(c, "") if c != "site" else r.source for c in PROVENANCE_COLUMNS]
                     for r in rows]
        _write_csv(self.out_dir / "provenance.csv", PROVENANCE_COLUMNS, prov_rows)
        path = _write_csv(self.out_dir / "labels.csv", LABEL_COLUMNS, label_rows)
        logger.info("%s: %d photos of %d items", path, len(rows), len(self.items()))
        return path


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]]) -> Path:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)
    return path
