"""Reading a labels.csv dataset folder (the format of shared/data) into arrays.

``read_labels`` checks the whole file before anything trains on it, so a bad cell fails in a
second with its file, line and column instead of mid-epoch: the header (every column present,
none twice), each row (its number of fields, label values 0 / 0.5 / 1, a known split, a
non-empty image path inside the dataset folder that exists and appears once -- compared after
normalisation, so ``./img/p3.jpg`` is a duplicate of ``img/p3.jpg``), and, on request, that splits
are not empty. A photo that cannot be decoded is found when it is read for training or
evaluation: :func:`unreadable_photo` names its file and line, and ``read_labels(skip_bad=True)``
(``--skip-bad``) leaves such photos out up front instead.
Up to :data:`MAX_PROBLEMS` problems are reported at once so a file is fixed in one pass.

What is not policed: extra columns (ignored), the values of item / source / src_class / origin,
and the labels of not-footwear rows (``not_footwear=1`` rows have attributes 0.5, but any 0 / 0.5
/ 1 is accepted).
"""
from __future__ import annotations

import csv
import io
import logging
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .attributes import MASK, OUTPUT_KEYS

__all__ = ["LabelsError", "LabelTable", "read_labels", "unreadable_photo", "META_COLUMNS", "SPLITS", "MAX_PROBLEMS",
           "class_weights"]

logger = logging.getLogger(__name__)

META_COLUMNS = ("image", "item", "source", "src_class", "split", "origin")
SPLITS = ("train", "val", "test")
MAX_PROBLEMS = 10
_VALUES = {"0": 0.0, "1": 1.0, "0.5": 0.5}  # the spellings of shared/data; others go through float()
_ALLOWED = "0 (absent), 0.5 (unknown) or 1 (present)"


CATALOGUE_SOURCES = ("attrdisc", "zappos3", "myntra")  # studio photos, mostly one shoe on white
WILD_SOURCES = ("street", "worn")  # photos in the wild: shoes on feet, street crops


def photo_kinds(table: "LabelTable") -> dict[str, np.ndarray]:
    """The evaluation protocol's three kinds of photo as row masks (shared/spec/evaluation.md):
    catalogue, ``worn`` (shoes on feet) and ``street`` (crops of street photos)."""
    return {"catalogue": np.isin(table.source, CATALOGUE_SOURCES), "worn": table.source == "worn",
            "street": table.source == "street"}


class LabelsError(ValueError):
    """A labels.csv that cannot be trained on: names the file, line and column.

    Attributes:
        path: the labels file.
        problems: ``(line, column, message)`` for each problem found (line 1 is the header;
            line and column are None for problems of the whole file).
    """

    def __init__(self, message: str, path: Path | str | None = None,
                 problems: list[tuple[int | None, str | None, str]] | None = None) -> None:
        super().__init__(message)
        self.path, self.problems = path, list(problems or [])


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
    line: np.ndarray | None = None  # (N,) the row's line in labels.csv, for messages

    def __len__(self) -> int:
        return len(self.image)

    def paths(self) -> list[Path]:
        return [self.root / p for p in self.image]

    def subset(self, mask: np.ndarray) -> "LabelTable":
        return LabelTable(self.root, self.image[mask], self.item[mask], self.source[mask],
                          self.split[mask], self.origin[mask], self.y[mask],
                          None if self.line is None else self.line[mask])


def read_labels(path: str | Path, *, check_images: bool = True,
                require_splits: Iterable[str] = (), skip_bad: bool = False) -> LabelTable:
    """Read ``labels.csv`` (or a folder holding it); image paths are relative to its folder.

    Args:
        path: the file, or the dataset folder that holds ``labels.csv``.
        check_images: check that every image file exists (one ``os.path.exists`` per row).
        require_splits: splits that must have rows, e.g. ``("train", "val")`` before training.
        skip_bad: decode every photo now and leave out those that cannot be used (each logged
            with its line); one decoding pass over the dataset.

    Returns:
        The :class:`LabelTable`, rows in file order.

    Raises:
        LabelsError: the file is missing, empty or not UTF-8, a column is missing, or rows have
            bad values, unknown splits, missing or repeated images; the message names the file
            and, for each of the first ``MAX_PROBLEMS`` problems, the line and column.

    Example:
        >>> table = read_labels("../shared/data", require_splits=("train", "val"))
        >>> table.y.shape[1]
        14
    """
    path = Path(path)
    if path.is_dir():
        path = path / "labels.csv"
    if not path.is_file():
        raise LabelsError(f"{path}: no such file (a dataset folder holds labels.csv)", path)
    text = _text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = _rows(path, reader)
    header = next(rows, None)
    while header is not None and not any(c.strip() for c in header):  # blank lines before the header
        header = next(rows, None)
    if header is None:
        raise LabelsError(f"{path}: empty file; the first line must be the header: "
                          f"{','.join(META_COLUMNS + OUTPUT_KEYS)}", path)
    col = _columns(path, header, reader.line_num)
    meta = {c: [] for c in META_COLUMNS}
    ys: list[list[float]] = []
    problems: list[tuple[int | None, str | None, str]] = []
    seen: dict[str, int] = {}
    lines: list[int] = []
    root = path.parent
    for row in rows:
        line = reader.line_num
        if isinstance(row, LabelsError):
            problems.append((line, None, str(row)))
            break
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(header):
            problems.append((line, None, f"{len(row)} fields, the header has {len(header)}"))
            continue
        values = [row[col[c]] for c in META_COLUMNS]
        values[0] = _normalise(values[0])
        problems += _check_meta(values, line, root, seen, check_images)
        y = []
        for key in OUTPUT_KEYS:
            cell = row[col[key]]
            v = _VALUES.get(cell)
            if v is None:
                v = _parse(cell)
                if v is None:
                    problems.append((line, key, f"{cell!r} is not {_ALLOWED}"))
                    v = 0.5
            y.append(v)
        for c, v in zip(META_COLUMNS, values):
            meta[c].append(v)
        ys.append(y)
        lines.append(line)
    present = set(meta["split"])
    problems += [(None, "split", f"the {s} split has no rows") for s in require_splits if s not in present]
    if problems:
        raise _error(path, problems)
    cols = {c: np.array(v, dtype=object) for c, v in meta.items()}
    y_arr = np.array(ys, dtype=np.float32).reshape(len(ys), len(OUTPUT_KEYS))
    table = LabelTable(root, cols["image"], cols["item"], cols["source"], cols["split"], cols["origin"], y_arr,
                       np.array(lines, dtype=np.int64))
    return _without_unreadable(table, path) if skip_bad else table


def unreadable_photo(table: LabelTable, i: int, problem: str) -> LabelsError:
    """The error for row ``i`` of ``table`` whose photo cannot be used: file, line and why."""
    path = table.root / "labels.csv"
    line = int(table.line[i]) if table.line is not None else None
    where = f"line {line}, " if line is not None else ""
    return LabelsError(f"{path}: {where}column image: {problem}; fix or remove the photo, or pass --skip-bad "
                       "to leave unreadable photos out", path, [(line, "image", problem)])


def _without_unreadable(table: LabelTable, path: Path) -> LabelTable:
    from .images import ImageError, load_image  # labels.py reads CSV; decoding is needed only here

    keep = np.ones(len(table), dtype=bool)
    for i, photo in enumerate(table.paths()):
        try:
            load_image(photo)
        except ImageError as exc:
            keep[i] = False
            logger.warning("%s: line %d: left out (--skip-bad): %s", path, table.line[i], exc)
    if not keep.all():
        logger.warning("%s: %d of %d photos left out as unreadable", path, int((~keep).sum()), len(table))
    return table.subset(keep)


def _normalise(image: str) -> str:
    """One spelling per photo: forward slashes, no ``.`` or ``a/..`` parts (``./img/p3.jpg`` is ``img/p3.jpg``)."""
    if not image.strip():
        return image
    return posixpath.normpath(image.replace("\\", "/"))


def _rows(path: Path, reader):
    """The reader's rows; a CSV syntax error (a NUL byte, a huge field) ends them with a LabelsError."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if reader.line_num <= 1:
                raise LabelsError(f"{path}: line 1: not a CSV file ({exc})", path) from exc
            yield LabelsError(f"not valid CSV ({exc}); nothing after this line was read")
            return


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise LabelsError(f"{path}: line {line}: not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
                          "save the file as UTF-8 (Excel: 'CSV UTF-8', LibreOffice: character set "
                          "Unicode (UTF-8))", path, [(line, None, "not UTF-8")]) from exc


def _columns(path: Path, header: list[str], line: int) -> dict[str, int]:
    col: dict[str, int] = {}
    twice = []
    for i, name in enumerate(header):
        if name in col:
            twice.append(name)
        col.setdefault(name, i)
    needed = META_COLUMNS + OUTPUT_KEYS
    missing = [c for c in needed if c not in col]
    if missing or twice:
        loose = {h.strip().lower(): h for h in header}
        near = [f"{loose[c]!r} for {c!r}" for c in missing if c in loose]
        msg = f"{path}: line {line} (header): "
        msg += f"missing column(s) {', '.join(missing)}" if missing else ""
        msg += ("; " if missing and twice else "") + (f"column(s) {', '.join(twice)} twice" if twice else "")
        msg += f"; found {', '.join(near)} (check spaces and case)" if near else ""
        msg += f". The header must hold: {','.join(needed)}"
        raise LabelsError(msg, path, [(line, c, "missing column") for c in missing]
                          + [(line, c, "column twice") for c in twice])
    return col


def _check_meta(values: list[str], line: int, root: Path, seen: dict[str, int], check_images: bool):
    image, split = values[0], values[4]
    out = []
    if not image.strip():
        out.append((line, "image", "empty image path"))
    elif posixpath.isabs(image) or os.path.isabs(image) or image == ".." or image.startswith("../"):
        out.append((line, "image", f"{image} is outside the dataset folder {root} (paths are relative to it "
                                   "and stay inside it)"))
    elif image in seen:
        out.append((line, "image", f"{image} is already on line {seen[image]} (each photo once)"))
    else:
        seen[image] = line
        if check_images and not os.path.exists(os.path.join(root, image)):
            out.append((line, "image", f"{image} does not exist (paths are relative to {root})"))
    if split not in SPLITS:
        out.append((line, "split", f"{split!r} is not one of {', '.join(SPLITS)}"))
    return out


def _parse(cell: str) -> float | None:
    try:
        v = float(cell)
    except ValueError:
        return None
    return v if v in (0.0, 0.5, 1.0) else None


def _error(path: Path, problems: list[tuple[int | None, str | None, str]]) -> LabelsError:
    def where(line, column):
        parts = ([f"line {line}"] if line is not None else []) + ([f"column {column}"] if column else [])
        return ", ".join(parts) + ": " if parts else ""

    shown = [f"{where(line, column)}{msg}" for line, column, msg in problems[:MAX_PROBLEMS]]
    if len(problems) == 1:
        return LabelsError(f"{path}: {shown[0]}", path, problems)
    more = f" (the first {MAX_PROBLEMS} shown)" if len(problems) > MAX_PROBLEMS else ""
    text = f"{path}: {len(problems)} problems{more}; fix them before training:\n  " + "\n  ".join(shown)
    return LabelsError(text, path, problems)


def class_weights(y: np.ndarray, power: float = 1.0, max_weight: float | None = None) -> np.ndarray:
    """(2, K) weights for negatives and positives that equalise the two classes of each output.

    ``power`` = 1 weights both classes equally (what balanced accuracy rewards); 0 leaves the data's
    own frequencies; values between soften the reweighting. ``max_weight`` caps every weight.
    """
    known = y != MASK
    n_pos = ((y == 1) & known).sum(0).astype(np.float64)
    n_neg = ((y == 0) & known).sum(0).astype(np.float64)
    n = np.maximum(n_pos + n_neg, 1)
    w_pos = (n / np.maximum(2 * n_pos, 1)) ** power
    w_neg = (n / np.maximum(2 * n_neg, 1)) ** power
    w = np.stack([w_neg, w_pos])
    return (w if max_weight is None else np.minimum(w, max_weight)).astype(np.float32)
