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
    if want == "ok":
        img = load_image(source(name))
        assert img.mode == "RGB" and MIN_SIDE <= min(img.size) and max(img.size) <= MAX_SIDE
        return
    with pytest.raises(ImageError) as info:
        load_image(source(name))
    err = info.value
    assert want in str(err)
    assert err.photo == source(name) and err.problem and err.hint  # which photo, what is wrong, what to do


@pytest.mark.parametrize("name", ["exif_rotated.jpg", "cmyk.jpg", "greyscale.jpg", "rgb16.png", "photo.webp",
                                  "photo.bmp", "photo.tiff", "jpeg_named.heic", "ботинок_фото.jpg",
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


def test_animation_gives_its_first_frame() -> None:
    assert (np.abs(pixels("animated.gif") - (220, 0, 0)) <= 2).all()


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
    assert img.size == (2048, 1024) and (np.abs(np.asarray(img, np.int16) - (180, 150, 120)) <= 3).all()
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
        if want == "ok":
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
