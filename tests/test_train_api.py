"""Training on a tiny labels.csv folder, the model folder it writes, and classify_images on it."""
import json

import numpy as np
import pytest
from PIL import Image

from shoeclass import classify_images
from shoeclass.api import Classifier
from shoeclass.assets import asset
from shoeclass.attributes import OUTPUT_KEYS
from shoeclass.checkpoint import CheckpointError, load_checkpoint
from shoeclass.cli import main as cli
from shoeclass.training import load_config, train


@pytest.fixture(scope="module")
def tiny_model(tiny_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model")
    cfg = load_config(asset("configs", "efficientnet_lite0.yaml"), {
        "data": str(tiny_dataset), "out": str(tmp / "m"), "epochs": 3, "cache_dir": str(tmp / "cache"),
        "progress": False, "aug_views": 1})
    return train(cfg)


def test_model_folder_holds_tensors_metadata_and_config(tiny_model):
    meta = json.loads((tiny_model / "model.json").read_text())
    assert meta["attributes"] == list(OUTPUT_KEYS)
    assert meta["backbone"] == "efficientnet_lite0"
    assert len(meta["sha256"]) == 64 and len(meta["trunk"]["sha256"]) == 64
    assert meta["training"]["config"]["epochs"] == 3
    assert meta["training"]["data"]["train"]["photos"] == 24
    assert "test" in meta["metrics"] and meta["decision"]["calibration"] is not None
    assert (tiny_model / "config.yaml").is_file()


def test_classify_accepts_every_input_type_and_keeps_good_photos(tiny_model, tiny_dataset):
    path = tiny_dataset / "images" / "p000.jpg"
    img = Image.open(path)
    r = classify_images([str(path), path.read_bytes(), img, np.asarray(img), b"not an image"], model=tiny_model)
    d = r.to_dict()
    assert [p["error"] is None for p in d["photos"]] == [True, True, True, True, False]
    assert "<bytes #4>" in d["photos"][4]["error"]
    assert set(d["attributes"]) == set(OUTPUT_KEYS)
    assert np.asarray(d["matrix"]).shape == (4, 14)
    for p in d["photos"][:4]:  # the same photo in four forms gives the same values
        assert p["attributes"] == pytest.approx(d["photos"][0]["attributes"], abs=1e-4)
    assert all(0.0 <= v <= 1.0 for v in d["attributes"].values())
    json.dumps(d)  # JSON-serialisable


def test_all_photos_bad_gives_error_status(tiny_model):
    d = classify_images([b"", b"xx"], model=tiny_model).to_dict()
    assert d["status"] == "error" and d["attributes"] is None and len(d["photos"]) == 2


def test_declared_facts_reach_the_tariff_and_bad_ones_raise(tiny_model, tiny_dataset):
    photo = str(tiny_dataset / "images" / "p001.jpg")
    d = classify_images(photo, model=tiny_model, declared={"upper_material": "leather", "sole_material": "rubber"}).to_dict()
    assert d["tariff"]["status"] in ("ok", "needs_review")
    with pytest.raises(ValueError, match="upper_material"):
        classify_images(photo, model=tiny_model, declared={"upper_material": "gold"})


def test_tampered_tensors_are_refused(tiny_model, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(copy)


def test_cli_classify_and_evaluate(tiny_model, tiny_dataset, tmp_path, capsys):
    assert cli(["classify", str(tiny_dataset / "images" / "p000.jpg"), "--model", str(tiny_model), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["attributes"]) == set(OUTPUT_KEYS)
    report = tmp_path / "r.json"
    assert cli(["evaluate", "--data", str(tiny_dataset), "--model", str(tiny_model), "--json", str(report),
                "--plots", str(tmp_path / "plots"), "--no-progress"]) == 0
    assert json.loads(report.read_text())["data"]["photos"] == 6
    assert (tmp_path / "plots" / "reliability.png").is_file()
    assert cli(["clusters", "--model", str(tiny_model)]) == 0
    assert "not footwear" in capsys.readouterr().out


def test_lenet_trains_one_epoch(tiny_dataset, tmp_path):
    cfg = load_config(asset("configs", "lenet.yaml"), {"data": str(tiny_dataset), "out": str(tmp_path / "l"), "epochs": 1,
                                             "batch_size": 8, "cache_dir": str(tmp_path / "c"), "progress": False})
    folder = train(cfg)
    clf = Classifier(folder)
    r = clf.classify(str(tiny_dataset / "images" / "p002.jpg"))
    assert r.probs.shape == (14,)


def test_unknown_config_key_is_named():
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(None, {"epochz": 3})


def test_exponent_floats_are_read_as_numbers_and_bad_ones_named():
    # YAML 1.1 reads 5e-5 (no dot) as a string; a learning rate written so must still work
    cfg = load_config(None, {"tune_lr": "5e-5", "lr": 1, "model.dropout": "0.2"})
    assert cfg.tune_lr == 5e-5 and isinstance(cfg.lr, float) and cfg.model.dropout == 0.2
    with pytest.raises(ValueError, match="'lr' must be a number"):
        load_config(None, {"lr": "fast"})


def test_source_and_origin_weights_multiply(tiny_dataset):
    from shoeclass.labels import read_labels
    from shoeclass.training.config import sample_weights

    table = read_labels(tiny_dataset)
    table.source[:4] = "worn"
    table.origin[2:6] = "class"
    w = sample_weights(table, load_config(None, {"source_weights": {"worn": 3.0}, "origin_weights": {"eye": 2.0}}))
    assert w[:2].tolist() == [6.0, 6.0]  # worn, by eye
    assert w[2:4].tolist() == [3.0, 3.0]  # worn, class-derived
    assert w[4:6].tolist() == [1.0, 1.0] and w[6] == 2.0


def test_photos_of_different_products_go_to_review_naming_one(tiny_model, tiny_dataset):
    clf = Classifier(tiny_model)
    boot, sandal = tiny_dataset / "images/p000.jpg", tiny_dataset / "images/p001.jpg"
    d = clf.classify([str(boot), str(boot)]).to_dict()
    assert d["review"] is None and isinstance(d["set_aside"], list)
    clf.decision.checks.min_cosine = 0.999  # two different photos can no longer pass as one product
    d = clf.classify([str(boot), str(sandal)]).to_dict()
    assert d["status"] == "needs_review" and d["review"]["reason"] == "different_products"
    assert d["review"]["photo"] in (str(boot), str(sandal)) and d["attributes"] is not None


def test_fit_materials_then_classify_shows_materials_and_checks_a_code(tiny_model, tiny_dataset, tmp_path, capsys):
    import csv
    import shutil

    from shoeclass.training.materials import fit_materials

    model = shutil.copytree(tiny_model, tmp_path / "model")
    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    with (data / "texts.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "source", "text"])
        for i in range(36):
            w.writerow([f"images/p{i:03d}.jpg", "synthetic",
                        "Leather upper and rubber sole" if i % 3 == 0 else "Canvas upper, leather sole"])
    section = fit_materials(model, data, cache_dir=tmp_path / "cache", progress=False, min_train=2)
    assert section["parts"]["upper"]["classes"] == ["leather", "textile"]
    meta = json.loads((model / "model.json").read_text())
    assert meta["materials"]["sha256"] == section["sha256"] and meta["sha256"] == json.loads(
        (tiny_model / "model.json").read_text())["sha256"]  # the model's own tensors are untouched
    photo = str(data / "images" / "p000.jpg")
    d = classify_images([photo, photo], model=model, declared={"code": "6404199000"}).to_dict()
    for m in [d["materials"]] + [p["materials"] for p in d["photos"]]:
        assert set(m) == {"upper", "sole"} and sum(m["upper"].values()) == pytest.approx(1, abs=1e-5)
    assert d["tariff"]["rationale"]["assumed"].get("upper_material", "prior passed in").startswith("prior passed in")
    assert d["check"]["code"] == "6404199000" and 0 <= d["check"]["p_consistent"] <= 1
    with pytest.raises(ValueError, match="10-digit leaf"):
        classify_images(photo, model=model, declared={"code": "123"})
    assert cli(["check", "--code", "6404199000", photo, "--model", str(model)]) == 0
    assert "declared code 6404199000" in capsys.readouterr().out
    from shoeclass._card import card_problem

    bad = json.loads((model / "model.json").read_text())
    bad["materials"]["parts"]["upper"]["classes"] = ["leather", "wood_cork"]  # a sole class on the upper
    assert card_problem(bad)[0] == "materials.parts.upper.classes"
    (model / "model.json").write_text(json.dumps(bad))  # the card checksum covers the heads' section
    with pytest.raises(CheckpointError, match="materials"):
        load_checkpoint(model)
