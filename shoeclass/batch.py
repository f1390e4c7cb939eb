"""Batch classification: a folder or a labels.csv-style list of photos -> one JSON line per item.

Each line is ``{"item": <id>, **classify_images(photos).to_dict()}``. The run is resumable: items
whose line is already in the output (or in a part file a killed run left) are skipped. Under
``torchrun`` the remaining items are split across ranks (rank r takes items r, r+N, …); each rank
appends to its own part file ``<out>.part<r>``, and after a barrier rank 0 merges everything into
``<out>`` in input order and removes the parts. One process works the same way with one part.

What is an item:

* a folder holding ``labels.csv``: that list (below);
* another folder: each photo directly in it is an item of one photo (id: the file name), each
  subfolder an item of the photos inside it (id: the subfolder's name);
* a ``.csv`` file with an ``image`` column (paths relative to the file's folder): each row is an
  item of one photo (id: the image path), or, with ``items_column`` (e.g. ``item``), the rows
  sharing a value form one item with that id, in order of first appearance;
* any other file: one photo path per line, each an item of one photo.
"""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import distributed as dist

__all__ = ["Item", "read_items", "classify_batch", "done_items", "IMAGE_SUFFIXES"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"})


@dataclass(frozen=True)
class Item:
    """One footwear item: its id in the output and the paths of its photos."""

    id: str
    photos: tuple[str, ...]


def read_items(source: str | Path, items_column: str | None = None) -> list[Item]:
    """The items of a folder or a list file, in input order (see the module docstring).

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a CSV without an ``image`` column, an unknown ``items_column``, or two items
            with the same id (the id is how a resumed run recognises finished items).
    """
    path = Path(source)
    if path.is_dir() and (path / "labels.csv").is_file():
        path = path / "labels.csv"
    if path.is_dir():
        if items_column:
            raise ValueError(f"--items {items_column}: a folder has no columns; pass a labels.csv-style list")
        items = _folder_items(path)
    elif path.is_file():
        items = _csv_items(path, items_column) if path.suffix.lower() == ".csv" else _text_items(path, items_column)
    else:
        raise FileNotFoundError(f"{source}: no such folder or list file")
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise ValueError(f"{path}: item id {it.id!r} appears twice; ids must be unique"
                             + ("" if items_column else " (group a multi-photo item's rows with --items COLUMN)"))
        seen.add(it.id)
    return items


def _folder_items(root: Path) -> list[Item]:
    items = []
    for p in sorted(root.iterdir()):
        if p.is_dir():
            photos = tuple(str(q) for q in sorted(p.iterdir()) if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if photos:
                items.append(Item(p.name, photos))
        elif p.suffix.lower() in IMAGE_SUFFIXES:
            items.append(Item(p.name, (str(p),)))
    return items


def _csv_items(path: Path, column: str | None) -> list[Item]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "image" not in fields:
            raise ValueError(f"{path}: no 'image' column (columns: {', '.join(fields) or 'none'})")
        if column and column not in fields:
            raise ValueError(f"{path}: --items column {column!r} not found (columns: {', '.join(fields)})")
        rows = [(row[column] if column else row["image"], str(path.parent / row["image"])) for row in reader]
    if not column:
        return [Item(key, (photo,)) for key, photo in rows]
    groups: dict[str, list[str]] = {}
    for key, photo in rows:
        groups.setdefault(key, []).append(photo)
    return [Item(k, tuple(v)) for k, v in groups.items()]


def _text_items(path: Path, column: str | None) -> list[Item]:
    if column:
        raise ValueError(f"{path}: --items {column}: only a .csv list has columns")
    lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    return [Item(s, (str(path.parent / s),)) for s in lines if s and not s.startswith("#")]


def _part(out: Path, r: int) -> Path:
    return out.with_name(f"{out.name}.part{r}")


def _lines(path: Path) -> dict[str, str]:
    """id -> JSON line of a results file; a line a killed run cut short is ignored (redone)."""
    found: dict[str, str] = {}
    if not path.is_file():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            found[json.loads(line)["item"]] = line
        except (ValueError, KeyError, TypeError):
            logger.warning("%s: skipping an unreadable line (a run stopped mid-write?)", path)
    return found


def done_items(out: str | Path) -> dict[str, str]:
    """id -> JSON line of every item finished in ``out`` or in the part files of an unfinished run."""
    out = Path(out)
    found = _lines(out)
    for part in sorted(out.parent.glob(f"{out.name}.part*")):
        found.update(_lines(part))
    return found


def classify_batch(items: Sequence[Item], out: str | Path, model=None, *, top_k: int = 5,
                   bf16: bool | None = None, device=None, progress: bool = True) -> dict:
    """Classify every item not yet in ``out``; under torchrun each rank takes its share.

    Args:
        items: from :func:`read_items`.
        out: the JSON-lines file (appended to by a resumed run, rewritten in input order at the end).
        model: a model folder, or None for the shipped model.
        device: where the model runs; None: this rank's GPU when CUDA is present, else the CPU.

    Returns:
        Counts: ``items``, ``skipped`` (done before), ``classified`` (by this rank) and ``errors``
        (by this rank: items with no readable photo, or that failed).
    """
    from .api import Classifier  # torch and the model only when classifying

    out = Path(out)
    done = set(done_items(out))
    dist.barrier()  # every rank has read the same finished set before any rank appends to a part
    mine = dist.shard([it for it in items if it.id not in done])
    clf = Classifier(model, bf16=bf16, device=device if device is not None else dist.device())
    errors = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with _part(out, dist.rank()).open("a", encoding="utf-8") as fh:
        for it in tqdm(mine, desc="classify", unit="item", disable=not progress or not dist.is_main()):
            try:
                data = clf.classify(list(it.photos), top_k=top_k).to_dict()
            except Exception as exc:  # one bad item never costs the others their results
                logger.error("item %s: %s", it.id, exc)
                data = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
            errors += data["status"] == "error"
            fh.write(json.dumps({"item": it.id, **data}, ensure_ascii=False) + "\n")
            fh.flush()
    dist.barrier()
    if dist.is_main():
        _merge(items, out)
    dist.barrier()
    return {"items": len(items), "skipped": len(done), "classified": len(mine), "errors": errors}


def _merge(items: Sequence[Item], out: Path) -> None:
    """Rewrite ``out`` from itself and the part files, in input order; then remove the parts."""
    found = done_items(out)
    order = [it.id for it in items if it.id in found]
    extra = [k for k in found if k not in {it.id for it in items}]  # from an earlier, different input
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for key in order + extra:
            fh.write(found[key] + "\n")
    tmp.replace(out)
    for part in out.parent.glob(f"{out.name}.part*"):
        part.unlink()
    logger.info("%d items written to %s", len(order) + len(extra), out)
