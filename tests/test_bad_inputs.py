"""Every file of tests/data/bad/ is classified or refused with its expected ImageError; a bad photo
never costs the other photos of the item; classifying writes nothing anywhere."""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, JpegImagePlugin

from shoeclass.api import Classifier, classify_images
from shoeclass.images import MAX_SIDE, MIN_SIDE, ImageError, load_image
from shoeclass.training import load_config, train

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data")

REPO = Path(__file__).resolve().parent.parent
BAD = REPO / "tests" / "data" / "bad"
EXPECTED = yaml.safe_load((BAD / "expected.yaml").read_text(encoding="utf-8"))
CASES = {**EXPECTED["files"], **EXPECTED["inputs"]}
NO_SHOE = "no shoe in this photo"  # loads, then refused before the network as blank
OK = [name for name, want in EXPECTED["files"].items() if want == "ok"]

_spec = importlib.util.spec_from_file_location("make_bad_corpus", REPO / "scripts" / "make_bad_corpus.py")
corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus)


def source(name: str) -> str:
    """A corpus entry as a user would pass it: URLs as they are, everything else as a path."""
    return name if "://" in name or name.startswith("data:") else str(BAD / name)


def pixels(name: str) -> np.ndarray:
    return np.asarray(load_image(source(name)), dtype=np.int16)


@pytest.fixture(scope="module")
def model_dir(tiny_dataset: Path, tmp_path_factory) -> Path:
    """A small efficientnet_lite0 model trained on the tiny dataset (not the shipped weights)."""
    tmp = tmp_path_factory.mktemp("bad_inputs_model")
    cfg = load_config(REPO / "configs" / "efficientnet_lite0.yaml", {
        "data": str(tiny_dataset), "out": str(tmp / "model"), "epochs": 2, "cache_dir": str(tmp / "cache"),
        "progress": False, "aug_views": 1})
    return train(cfg)


@pytest.fixture(scope="module")
def clf(model_dir: Path) -> Classifier:
    return Classifier(model_dir, bf16=False)


def test_corpus_matches_its_script(tmp_path: Path) -> None:
    corpus.write(tmp_path / "bad")
    made = sorted(str(p.relative_to(tmp_path / "bad")) for p in (tmp_path / "bad").rglob("*") if p.is_file())
    kept = sorted(str(p.relative_to(BAD)) for p in BAD.rglob("*") if p.is_file())
    assert made == kept
    assert (tmp_path / "bad" / "expected.yaml").read_text(encoding="utf-8") == (BAD / "expected.yaml").read_text(
        encoding="utf-8")
    assert len(EXPECTED["files"]) >= 15 and sum(p.stat().st_size for p in BAD.rglob("*")) < 400_000


@pytest.mark.parametrize("name", list(CASES))
def test_load_image(name: str) -> None:
    want = CASES[name]
    if want in ("ok", NO_SHOE):
        img = load_image(source(name))
        assert img.mode == "RGB" and MIN_SIDE <= min(img.size) and max(img.size) <= MAX_SIDE
        return
    with pytest.raises(ImageError) as info:
        load_image(source(name))
    err = info.value
    assert want in str(err)
    assert err.photo == source(name) and err.problem and err.hint  # which photo, what is wrong, what to do


@pytest.mark.parametrize("name", ["exif_rotated.jpg", "cmyk.jpg", "greyscale.jpg", "rgb16.png", "photo.webp",
                                  "animated.webp", "jpeg_named.heic", "ботинок_фото.jpg",
                                  "папка/сапог 2.jpg", "corrupt_exif.jpg", "progressive.jpg"])
def test_decoded_pixels_are_the_upright_boot(name: str) -> None:
    """Same drawing as the script made, upright: red shaft at the top, dark sole at the bottom."""
    got = pixels(name)
    ref = np.asarray(corpus.boot().convert("L" if name == "greyscale.jpg" else "RGB").convert("RGB"), np.int16)
    assert got.shape == ref.shape == (128, 96, 3)
    assert np.abs(got - ref).mean() < 6, name
    assert abs(got[10, 43] - ref[10, 43]).max() < 30 and ref[10, 43, 1] < 100  # the shaft is at the top
    assert got[-5, 48].max() < 60  # the sole is at the bottom


def test_exif_rotation_is_applied() -> None:
    with Image.open(BAD / "exif_rotated.jpg") as raw:
        assert raw.size == (128, 96) and raw.getexif()[0x0112] == 6  # stored sideways
    assert load_image(BAD / "exif_rotated.jpg").size == (96, 128)


def test_transparency_is_white_not_black() -> None:
    for name in ("alpha.png", "grey_alpha.png"):
        got = pixels(name)
        assert (got[2, 2] == 255).all() and (got[-2, -2] == 255).all(), name
    assert (pixels("alpha.png")[10, 43] == (200, 30, 30)).all()  # the opaque boot is untouched


def test_16_bit_is_scaled_not_clipped() -> None:
    grey = pixels("grey16.png")
    assert (grey[:, :48] == 128).all() and (grey[:, 48:] == 255).all()  # 0x8000 -> 128, 0xFFFF -> 255
    assert (pixels("rgb16.png") == np.asarray(corpus.boot())).all()


def test_large_images_are_reduced_early(monkeypatch) -> None:
    drafted = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        out = real(self, mode, size)
        drafted.append(self.size)
        return out

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    img = load_image(BAD / "large_8192x4096.jpg")
    assert drafted == [(4096, 2048)]  # libjpeg decoded at half scale: 8 MP in memory, not 33 MP
    assert img.size == (2048, 1024) and (np.abs(np.asarray(img, np.int16)[:200, :200] - (180, 150, 120)) <= 3).all()
    assert load_image(BAD / "large_6000x4000.png").size == (2048, 1365)


def test_pil_and_array_inputs() -> None:
    ref = Image.open(BAD / "alpha.png")
    before = np.asarray(ref).copy()
    out = load_image(ref)
    assert out is not ref and out.mode == "RGB" and (np.asarray(ref) == before).all()  # caller's image kept
    assert load_image(np.zeros((40, 50), np.uint8)).size == (50, 40)
    for arr, msg in [(np.zeros((40, 50), np.float32), "pass uint8"), (np.zeros((40, 50, 2), np.uint8), "shape"),
                     (np.zeros((8, 8, 3), np.uint8), "image too small"), (np.zeros((0, 0, 3), np.uint8), "too small")]:
        with pytest.raises(ImageError, match=msg):
            load_image(arr)
    with pytest.raises(ImageError, match="unsupported input type int"):
        load_image(42)


def test_bytes_inputs_behave_like_files() -> None:
    for name, want in EXPECTED["files"].items():
        data = (BAD / name).read_bytes()
        if want in ("ok", NO_SHOE):
            assert load_image(data).mode == "RGB"
        else:
            with pytest.raises(ImageError, match=want.replace("(", r"\(").replace(")", r"\)")):
                load_image(data)


def test_whole_corpus_through_the_classifier(clf: Classifier) -> None:
    """All entries as the photos of one item: each is classified or carries its expected error."""
    d = clf.classify([source(name) for name in CASES]).to_dict()
    assert d["attributes"] is not None and d["status"] != "error"
    for (name, want), photo in zip(CASES.items(), d["photos"]):
        if want == "ok":
            assert photo["error"] is None, (name, photo["error"])
            assert all(0.0 <= p <= 1.0 for p in photo["attributes"].values()), name
        else:
            assert want in photo["error"] and photo["attributes"] is None, name
            alone = clf.classify([source(name)]).to_dict()  # no model run: nothing was readable
            assert alone["attributes"] is None and alone["status"] == "error", name


def test_bad_photos_do_not_cost_the_good_ones(clf: Classifier) -> None:
    good = [str(BAD / "ботинок_фото.jpg"), str(BAD / "cmyk.jpg")]
    for bad in ["truncated.jpg", "bomb_png_900mp.png", "https://shop.example/img/boot.jpg", "empty.jpg"]:
        mixed = classify_images([good[0], source(bad), good[1]], model=clf).to_dict()
        alone = classify_images(good, model=clf).to_dict()
        errors = [p["error"] for p in mixed["photos"]]
        assert errors[0] is None and errors[2] is None and CASES[bad] in errors[1]
        assert mixed["status"] != "error"
        for k, p in alone["attributes"].items():  # the bad photo does not enter the fusion
            assert mixed["attributes"][k] == pytest.approx(p, abs=1e-6), (bad, k)
        assert [mixed["photos"][i]["attributes"] for i in (0, 2)] == [p["attributes"] for p in alone["photos"]]


def _snapshot(folder: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_classification_writes_nothing(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    cwd, home, tmp = (tmp_path / n for n in ("cwd", "home", "tmp"))
    for d in (cwd, home, tmp):
        d.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    for var in ("XDG_CACHE_HOME", "TORCH_HOME", "HF_HOME", "MPLCONFIGDIR"):
        monkeypatch.delenv(var, raising=False)
    before = {BAD: _snapshot(BAD), model_dir: _snapshot(model_dir)}
    clf = Classifier(model_dir)  # loading the model is part of classifying
    classify_images([source(name) for name in CASES], model=clf)
    classify_images([str(BAD / "truncated.jpg")], model=clf)
    assert os.listdir(cwd) == [] and os.listdir(home) == [] and os.listdir(tmp) == []
    assert {k: _snapshot(k) for k in before} == before


def special_inputs(tmp: Path) -> list[tuple]:
    """Inputs that are not plain files or not plain bytes, made here (a FIFO, links, a closed
    image ...): input -> a substring of its error, or "ok"."""
    os.mkfifo(tmp / "pipe.jpg")
    (tmp / "loop_a.jpg").symlink_to(tmp / "loop_b.jpg")
    (tmp / "loop_b.jpg").symlink_to(tmp / "loop_a.jpg")
    (tmp / "broken.jpg").symlink_to(tmp / "nowhere.jpg")
    closed = Image.open(BAD / "progressive.jpg")
    closed.load()
    closed.close()
    good = (BAD / "progressive.jpg").read_bytes()
    return [
        ("/dev/zero", "is a device, not a photo file"),
        (str(tmp / "pipe.jpg"), "is a named pipe (FIFO)"),
        (str(tmp / "loop_a.jpg"), "a symbolic link loop"),
        (str(tmp / "broken.jpg"), "a broken symbolic link"),
        (str(tmp / ("x" * 5000 + ".jpg")), "the path is too long"),
        (str(tmp / ("d" * 300) / "p.jpg"), "the path is too long"),
        (str(BAD / "progressive.jpg" / "p.jpg"), "a part of the path is a file"),
        ("nul\0.jpg", "NUL character"),
        (str(BAD / "progressive.jpg").encode(), "looks like a file path given as bytes"),
        (memoryview(good), "ok"),
        (memoryview(good)[::2], "not an image in a known format"),  # a strided view: every other byte
        (Image.open(BAD / "truncated.jpg"), "the file is truncated"),  # lazy: fails on first decode
        (closed, "the PIL image is closed"),
        (Image.open(BAD / "scan_bomb_2000.jpg"), "a JPEG of more than 64 scans"),  # lazy: the file's limits
        (Image.open(BAD / "large_8192x4096.jpg"), "ok"),  # lazy: decoded at reduced scale, not refused
        (Image.open(BAD / "photo.tiff"), "a TIFF file, which shoeclass does not read"),  # lazy TIFF
    ]


def test_special_inputs_name_what_they_are(tmp_path: Path) -> None:
    for src, want in special_inputs(tmp_path):
        if want == "ok":
            assert load_image(src).mode == "RGB"
            continue
        with pytest.raises(ImageError) as info:
            load_image(src)
        assert want in str(info.value), (src, str(info.value))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_a_folder_without_read_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "p.jpg").write_bytes((BAD / "progressive.jpg").read_bytes())
    locked.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            load_image(locked / "p.jpg")
    finally:
        locked.chmod(0o700)


def test_whole_corpus_mixed_with_one_good_photo(clf: Classifier, tmp_path: Path) -> None:
    """Every bad entry of the corpus and every special input, with one good photo among them at
    the start, the middle and the end: the good photo is always classified, the rest refused."""
    bad = [source(n) for n, want in CASES.items() if want != "ok"] + [
        src for src, want in special_inputs(tmp_path) if want != "ok"]
    good = str(BAD / "ботинок_фото.jpg")
    alone = clf.classify([good]).to_dict()
    for at in (0, len(bad) // 2, len(bad)):
        photos = bad[:at] + [good] + bad[at:]
        d = clf.classify(photos).to_dict()
        assert [p["error"] is None for p in d["photos"]] == [i == at for i in range(len(photos))]
        assert d["attributes"] == pytest.approx(alone["attributes"], abs=1e-6)
        assert d["tariff"] is not None


def test_argument_errors_come_before_any_photo_is_decoded(clf: Classifier, monkeypatch) -> None:
    import shoeclass.api as api

    decoded = []
    monkeypatch.setattr(api, "load_image", lambda *a, **k: decoded.append(a))
    for declared, top_k, msg in [(42, 5, "declared must be a dict"), ({"insole_cm": 10 ** 400}, 5, "insole_cm"),
                                 ({"insole_cm": float("nan")}, 5, "insole_cm"), (None, 0, "top_k"),
                                 (None, True, "top_k"), (None, "5", "top_k")]:
        with pytest.raises(ValueError, match=msg):
            classify_images([str(BAD / "progressive.jpg")], model=clf, declared=declared, top_k=top_k)
    assert decoded == []


def test_a_memoryview_is_one_photo(clf: Classifier) -> None:
    d = clf.classify(memoryview((BAD / "ботинок_фото.jpg").read_bytes())).to_dict()
    assert len(d["photos"]) == 1 and d["photos"][0]["error"] is None


@pytest.mark.parametrize("name", ["blank_grey.jpg", "blank_black.png", "blank_white.webp", "scans_64.jpg"])
def test_blank_photos_get_no_tariff_code(clf: Classifier, name: str) -> None:
    d = clf.classify([str(BAD / name)]).to_dict()
    assert NO_SHOE in d["photos"][0]["error"] and d["tariff"] is None and d["attributes"] is None
    nan = np.full((64, 64, 3), 0, np.uint8)  # what an all-NaN float image becomes
    assert NO_SHOE in clf.classify([nan]).to_dict()["photos"][0]["error"]
