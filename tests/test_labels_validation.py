"""read_labels refuses a bad labels.csv before training, naming the file, line and column."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from shoeclass.assets import asset
from shoeclass.attributes import ATTRIBUTE_KEYS, OUTPUT_KEYS
from shoeclass.labels import MAX_PROBLEMS, LabelsError, read_labels
from shoeclass.training import load_config, train

from conftest import HEADER


@pytest.fixture
def ds(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset to break."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "ds"))


def rows(ds: Path) -> list[dict[str, str]]:
    with (ds / "labels.csv").open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write(ds: Path, table: list[dict], header: list[str] = HEADER) -> Path:
    with (ds / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, header, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    return ds


def refused(ds: Path, *fragments: str, **kw) -> LabelsError:
    with pytest.raises(LabelsError) as info:
        read_labels(ds, **kw)
    msg = str(info.value)
    assert str(ds / "labels.csv") in msg
    for f in fragments:
        assert f in msg, (f, msg)
    return info.value


def test_the_tiny_dataset_reads(tiny_dataset: Path) -> None:
    table = read_labels(tiny_dataset, require_splits=("train", "val"))
    assert len(table) == 36 and table.y.shape == (36, 14) and table.y.dtype == np.float32
    assert set(np.unique(table.y)) <= {0.0, 0.5, 1.0}


def test_missing_column(ds: Path) -> None:
    write(ds, rows(ds), [h for h in HEADER if h != "height_knee"])
    err = refused(ds, "line 1 (header)", "missing column(s) height_knee")
    assert err.problems == [(1, "height_knee", "missing column")]


def test_misspelt_column_gets_a_hint(ds: Path) -> None:
    header = [" Split" if h == "split" else h for h in HEADER]
    write(ds, [dict(r, **{" Split": r["split"]}) for r in rows(ds)], header)
    refused(ds, "missing column(s) split", "found ' Split' for 'split' (check spaces and case)")


@pytest.mark.parametrize("value", ["2", "0.3", "yes", "", "nan", "-1"])
def test_value_other_than_0_half_1(ds: Path, value: str) -> None:
    table = rows(ds)
    table[4]["sports"] = value
    write(ds, table)
    refused(ds, "line 6, column sports", f"{value!r} is not 0 (absent), 0.5 (unknown) or 1 (present)")


def test_other_spellings_of_the_values_are_read(ds: Path) -> None:
    table = rows(ds)
    table[0].update(sports="0.0", indoor="1.0", high_heel=".5", height_low="1e0")
    write(ds, table)
    y = read_labels(ds).y[0]
    assert [y[OUTPUT_KEYS.index(k)] for k in ("sports", "indoor", "high_heel", "height_low")] == [0, 1, 0.5, 1]


def test_missing_image_file(ds: Path) -> None:
    (ds / "images" / "p003.jpg").unlink()
    refused(ds, "line 5, column image: images/p003.jpg does not exist")
    assert len(read_labels(ds, check_images=False)) == 36


def test_duplicate_rows(ds: Path) -> None:
    table = rows(ds)
    write(ds, table + [table[2]])
    refused(ds, "line 38, column image: images/p002.jpg is already on line 4")


def test_bad_split_name(ds: Path) -> None:
    table = rows(ds)
    table[0]["split"] = "validation"
    write(ds, table)
    refused(ds, "line 2, column split: 'validation' is not one of train, val, test")


def test_wrong_number_of_fields(ds: Path) -> None:
    lines = (ds / "labels.csv").read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].rsplit(",", 2)[0]
    (ds / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    refused(ds, f"line 4: {len(HEADER) - 2} fields, the header has {len(HEADER)}")


@pytest.mark.parametrize("split", ["train", "val"])
def test_empty_split(ds: Path, split: str) -> None:
    write(ds, [r for r in rows(ds) if r["split"] != split])
    refused(ds, f"column split: the {split} split has no rows", require_splits=("train", "val"))
    assert len(read_labels(ds))  # only asked for when training


def test_training_refuses_an_empty_split_before_it_starts(ds: Path, tmp_path: Path) -> None:
    write(ds, [r for r in rows(ds) if r["split"] != "val"])
    cfg = load_config(asset("configs", "lenet.yaml"), {"data": str(ds), "out": str(tmp_path / "run"),
                                             "cache_dir": str(tmp_path / "cache"), "progress": False})
    with pytest.raises(LabelsError, match="the val split has no rows"):
        train(cfg)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_training_refuses_a_bad_cell_before_it_starts(ds: Path, tmp_path: Path) -> None:
    table = rows(ds)
    table[30]["waterproof"] = "Y"
    write(ds, table)
    cfg = load_config(asset("configs", "lenet.yaml"), {"data": str(ds), "out": str(tmp_path / "run"),
                                             "cache_dir": str(tmp_path / "cache"), "progress": False})
    with pytest.raises(LabelsError, match="line 32, column waterproof"):
        train(cfg)
    assert not (tmp_path / "cache").exists()


def test_not_footwear_rows_are_not_over_policed(ds: Path) -> None:
    table = rows(ds)
    nf = [r for r in table if r["not_footwear"] == "1"]
    assert nf and all(r[k] == "0.5" for r in nf for k in ATTRIBUTE_KEYS)  # the data's convention
    nf[0]["height_low"] = "0"  # any 0 / 0.5 / 1 is still read
    write(ds, table)
    assert len(read_labels(ds)) == 36


def test_non_utf8_file(ds: Path) -> None:
    table = rows(ds)
    table[5]["src_class"] = "Сапоги"
    write(ds, table)
    text = (ds / "labels.csv").read_text(encoding="utf-8")
    (ds / "labels.csv").write_bytes(text.encode("cp1251"))
    refused(ds, "line 7: not UTF-8", "save the file as UTF-8")


def test_utf8_with_byte_order_mark(ds: Path) -> None:
    data = (ds / "labels.csv").read_bytes()
    (ds / "labels.csv").write_bytes(b"\xef\xbb\xbf" + data)
    assert len(read_labels(ds)) == 36


@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_empty_file(ds: Path, content: bytes) -> None:
    (ds / "labels.csv").write_bytes(content)
    refused(ds, "empty file; the first line must be the header: image,item,")


def test_header_only_has_no_rows(ds: Path) -> None:
    write(ds, [])
    assert len(read_labels(ds)) == 0
    refused(ds, "the train split has no rows", "the val split has no rows", require_splits=("train", "val"))


def test_nul_byte_in_a_path(ds: Path) -> None:
    data = (ds / "labels.csv").read_bytes().replace(b"p000.jpg", b"p0\x000.jpg", 1)
    (ds / "labels.csv").write_bytes(data)
    refused(ds, "line 2, column image:", "does not exist")


def test_no_such_file(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="no such file"):
        read_labels(tmp_path)


def test_many_problems_are_reported_at_once(ds: Path) -> None:
    table = rows(ds)
    for i, r in enumerate(table[:15]):
        r["sports"] = "x"
    table[20]["split"] = "dev"
    (ds / "images" / "p030.jpg").unlink()
    write(ds, table)
    err = refused(ds, "17 problems (the first 10 shown)", "line 2, column sports", "line 11, column sports")
    assert len(err.problems) == 17 and str(err).count("\n  ") == MAX_PROBLEMS
    assert (22, "split", "'dev' is not one of train, val, test") in err.problems
    assert "line 12, column sports" not in str(err)


@pytest.mark.parametrize("path", ["../../x.jpg", "images/../../x.jpg", "/etc/passwd"])
def test_paths_outside_the_dataset_folder_are_refused(ds: Path, path: str) -> None:
    (ds.parent / "x.jpg").write_bytes((ds / "images" / "p000.jpg").read_bytes())  # exists, but outside
    table = rows(ds)
    table[3]["image"] = path
    write(ds, table)
    err = refused(ds, "line 5, column image", "outside the dataset folder")
    assert err.problems[0][:2] == (5, "image")


def test_paths_are_normalised_before_the_duplicate_check(ds: Path) -> None:
    table = rows(ds)
    table[5]["image"] = "./" + table[2]["image"]
    write(ds, table)
    refused(ds, "line 7, column image", "images/p002.jpg is already on line 4")
    table[5]["image"] = "images/x/../" + table[2]["image"].split("/")[1]
    write(ds, table)
    refused(ds, "line 7, column image", "is already on line 4")


def test_an_unreadable_photo_is_named_with_its_line_or_left_out(ds: Path) -> None:
    from shoeclass.data import EvalPreset, table_outputs

    (ds / "images" / "p004.jpg").write_bytes((ds / "images" / "p004.jpg").read_bytes()[:300])  # cut off
    table = read_labels(ds)
    with pytest.raises(LabelsError) as info:
        table_outputs(lambda x: {"m": x.mean((1, 2, 3))[:, None].numpy()}, table, EvalPreset("lenet"),
                      batch_size=8, num_workers=0, progress=False)
    msg = str(info.value)
    assert msg.startswith(f"{ds / 'labels.csv'}: line 6, column image: ") and "p004.jpg" in msg
    assert "truncated" in msg and "--skip-bad" in msg and "Traceback" not in msg
    kept = read_labels(ds, skip_bad=True)
    assert len(kept) == len(table) - 1 and "images/p004.jpg" not in set(kept.image)
    assert list(kept.line[:5]) == [2, 3, 4, 5, 7]
