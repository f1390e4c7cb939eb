"""Fuzzing: random and mutated image bytes, random labels.csv cells and rows. The only exceptions
allowed out are ImageError and LabelsError; each run stays well under 30 s in all."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shoeclass.attributes import OUTPUT_KEYS
from shoeclass.images import MAX_SIDE, ImageError, load_image
from shoeclass.labels import SPLITS, LabelsError, read_labels

from conftest import HEADER

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _seed(fmt: str, **kw) -> bytes:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    mode = "RGBA" if fmt == "PNG" else "RGB"
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt, **kw)
    return buf.getvalue()


SEEDS = [_seed("JPEG", quality=80), _seed("JPEG", quality=80, progressive=True), _seed("PNG"),
         _seed("GIF"), _seed("WEBP"), _seed("TIFF"), _seed("BMP")]


def _check(data: bytes) -> None:
    try:
        img = load_image(data)
    except ImageError as exc:
        assert exc.problem and exc.hint
        return
    assert img.mode == "RGB" and max(img.size) <= MAX_SIDE
    img.tobytes()  # the pixels are really there


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "zero_run"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0xD9, 0xC0]))
        elif op == "cut":
            del data[i:]
            if not data:
                break
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[i:i + 32] = bytes(len(data[i:i + 32]))
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_images(data: bytes) -> None:
    _check(data)


@FUZZ
@given(st.sampled_from(SEEDS[:2]), st.integers(1, 65535), st.integers(1, 65535))
def test_jpeg_declaring_any_size(data: bytes, w: int, h: int) -> None:
    i = data.index(b"\xff\xc0") if b"\xff\xc0" in data else data.index(b"\xff\xc2")  # baseline / progressive
    _check(data[:i + 5] + h.to_bytes(2, "big") + w.to_bytes(2, "big") + data[i + 9:])


CELL = st.one_of(st.sampled_from(["0", "0.5", "1", "", "2", "nan", "-0", "1e0", " 1", "x", '"', "\n", "\x00"]),
                 st.text(max_size=6))


@st.composite
def label_rows(draw) -> list[list[str]]:
    n = draw(st.integers(0, 6))
    rows = []
    for i in range(n):
        row = [f"images/p{draw(st.integers(0, 7)):03d}.jpg", f"item{i}", "synthetic", "0",
               draw(st.sampled_from([*SPLITS, "dev", ""])), "eye"]
        row += [draw(st.sampled_from(["0", "0.5", "1"])) for _ in OUTPUT_KEYS]
        for _ in range(draw(st.integers(0, 3))):  # a few random cells
            row[draw(st.integers(0, len(row) - 1))] = draw(CELL)
        if draw(st.integers(0, 9)) == 0:  # sometimes a row too short or too long
            row = row[:draw(st.integers(0, len(row)))] if draw(st.booleans()) else row + ["extra"]
        rows.append(row)
    return rows


@FUZZ
@given(label_rows(), st.sampled_from([HEADER, HEADER[:-1], HEADER[::-1], [*HEADER, "note"], []]))
def test_labels_rows(tmp_path: Path, rows: list[list[str]], header: list[str]) -> None:
    (tmp_path / "images").mkdir(exist_ok=True)
    for i in range(0, 8, 2):  # half the referenced photos exist
        (tmp_path / "images" / f"p{i:03d}.jpg").write_bytes(b"")
    buf = io.StringIO()
    w = csv.writer(buf)
    if header:
        w.writerow(header)
    w.writerows(rows)
    (tmp_path / "labels.csv").write_text(buf.getvalue(), encoding="utf-8")
    try:
        table = read_labels(tmp_path, require_splits=("train",))
    except LabelsError as exc:
        assert str(tmp_path / "labels.csv") in str(exc)
        return
    assert table.y.shape == (len(table), len(OUTPUT_KEYS))
    assert set(np.unique(table.y)) <= {0.0, 0.5, 1.0} and "train" in set(table.split)
    assert all(os.path.exists(p) for p in table.paths()) and len(set(table.image)) == len(table)


@FUZZ
@given(st.binary(max_size=600))
def test_labels_random_bytes(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "labels.csv").write_bytes(",".join(HEADER).encode() + b"\n" + data)
    try:
        read_labels(tmp_path)
    except LabelsError:
        pass
