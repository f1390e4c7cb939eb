"""Fine-tuning the last EfficientNet-Lite blocks (model.tuned_blocks): stem/tail split, online
augmentation, training from cached pixels, resuming, and the tuned tensors travelling with the
model folder."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shoeclass import classify_images
from shoeclass.assets import asset
from shoeclass.checkpoint import CheckpointError, load_checkpoint
from shoeclass.models import build_trunk, state_checksum
from shoeclass.training import load_config, train


def test_stem_then_tail_equals_the_whole_trunk():
    trunk = build_trunk("efficientnet_lite0", "imagenet", tuned_blocks=2)
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        whole = trunk.pool(trunk.body.extract_features(x))
        split = trunk.tail(trunk.stem(x))
    assert trunk.cut == 14 and split.shape == (2, 2560)
    torch.testing.assert_close(split, whole)
    names = set(trunk.tuned_state())
    assert any(k.startswith("body._blocks.14.") for k in names) and "body._conv_head.weight" in names
    assert not any(k.startswith("body._blocks.13.") for k in names)


def test_tuned_blocks_out_of_range_or_on_other_backbones_raise():
    with pytest.raises(ValueError, match="tuned_blocks"):
        build_trunk("efficientnet_lite0", None, tuned_blocks=99)
    with pytest.raises(ValueError, match="efficientnet_lite"):
        build_trunk("vgg16", None, tuned_blocks=1)


def test_augmented_views_have_the_training_size_and_stay_in_range():
    from shoeclass.training.augment import augment_views

    x = torch.rand(4, 3, 224, 224)
    views = augment_views(x, torch.Generator().manual_seed(0), 160)
    assert views.shape == (4, 3, 160, 160) and views.min() >= 0 and views.max() <= 1
    again = augment_views(x, torch.Generator().manual_seed(0), 160)
    torch.testing.assert_close(views, again)  # the generator alone decides the views


def test_rotated_views_fill_outside_the_photo_with_white():
    from shoeclass.training.augment import augment_views

    black = torch.zeros(64, 3, 224, 224)
    views = augment_views(black, torch.Generator().manual_seed(1), 160)
    corners = views[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners > 0.5).any()  # some rotated view shows the white border, none shows garbage
    assert torch.isfinite(views).all()


@pytest.fixture(scope="module")
def tuned_model(tiny_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuned")
    cfg = load_config(asset("configs", "efficientnet_lite0.yaml"), {
        "data": str(tiny_dataset), "out": str(tmp / "m"), "epochs": 2, "cache_dir": str(tmp / "cache"),
        "progress": False, "aug_views": 1, "model.tuned_blocks": 1, "tune_epochs": 2, "tune_batch": 8})
    return train(cfg)


def test_training_retrains_the_tail_and_stores_it(tuned_model):
    meta = json.loads((tuned_model / "model.json").read_text())
    assert meta["model"]["tuned_blocks"] == 1 and meta["trunk"]["tuned_blocks"] == 1
    assert meta["training"]["history"]["tune"]["epochs_run"] == 2
    assert len(meta["training"]["history"]["tune"]["val_scores"]) == 3  # the start and two epochs
    state = load_file(str(tuned_model / "model.safetensors"))
    tuned = {k.removeprefix("trunk."): v for k, v in state.items() if k.startswith("trunk.")}
    imagenet = build_trunk("efficientnet_lite0", "imagenet", tuned_blocks=1).tuned_state()
    assert set(tuned) == set(imagenet)
    # the tail kept is the best on validation: the ImageNet one when no epoch beat the start
    changed = not torch.equal(tuned["body._conv_head.weight"], imagenet["body._conv_head.weight"])
    assert changed == (meta["training"]["history"]["tune"]["best_epoch"] >= 0)
    # the recorded checksum is the ImageNet trunk's, the one the stem must match at load time
    assert meta["trunk"]["sha256"] == state_checksum(build_trunk("efficientnet_lite0", "imagenet", tuned_blocks=1))


def test_loaded_model_uses_the_retrained_tail(tuned_model, tiny_dataset):
    model, _ = load_checkpoint(tuned_model)
    state = load_file(str(tuned_model / "model.safetensors"))
    torch.testing.assert_close(model.trunk.body._conv_head.weight, state["trunk.body._conv_head.weight"])
    d = classify_images(str(tiny_dataset / "images" / "p000.jpg"), model=tuned_model).to_dict()
    assert all(0.0 <= v <= 1.0 for v in d["attributes"].values())


def test_interrupted_tuning_resumes_and_other_settings_are_refused(tiny_dataset, tmp_path, monkeypatch):
    base = {"data": str(tiny_dataset), "out": str(tmp_path / "m"), "epochs": 1, "cache_dir": str(tmp_path / "c"),
            "progress": False, "aug_views": 1, "model.tuned_blocks": 1, "tune_epochs": 1, "tune_batch": 8}
    train(load_config(asset("configs", "efficientnet_lite0.yaml"), base))
    assert not (tmp_path / "m" / "tune_state.pt").exists()  # a finished model keeps no resume state
    # a run stopped after its last epoch's state was written, before the model folder was finished
    monkeypatch.setattr("shoeclass.training.run.finish_folder", lambda folder: None)
    train(load_config(asset("configs", "efficientnet_lite0.yaml"), {**base, "out": str(tmp_path / "cut")}))
    state = torch.load(tmp_path / "cut" / "tune_state.pt", weights_only=True)
    assert len(state["scores"]) == 2  # the start and the one epoch
    with pytest.raises(ValueError, match="other settings"):
        train(load_config(asset("configs", "efficientnet_lite0.yaml"), {**base, "out": str(tmp_path / "cut"), "tune_lr": 1e-3}))


def test_missing_tail_tensors_are_refused(tuned_model, tmp_path):
    from safetensors.torch import save_file

    from shoeclass.checkpoint import file_sha256, update_card

    folder = tmp_path / "m"
    folder.mkdir()
    state = {k: v for k, v in load_file(str(tuned_model / "model.safetensors")).items()
             if not k.startswith("trunk.body._bn1")}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "model.json").write_text((tuned_model / "model.json").read_text())
    update_card(folder, {"sha256": file_sha256(folder / "model.safetensors")})  # a card that vouches for them
    meta = json.loads((folder / "model.json").read_text())
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(folder)
    assert np.isfinite(meta["training"]["history"]["tune"]["val_mean_balanced_accuracy"])


def test_pixel_cache_is_keyed_by_photos_and_size(tiny_dataset, tmp_path):
    from shoeclass.data import EvalPreset
    from shoeclass.labels import read_labels
    from shoeclass.training.pixels import pixel_cache, pixel_cache_path

    table = read_labels(tiny_dataset)
    preset = EvalPreset("efficientnet_lite0")
    first = table.subset(np.arange(len(table)) < 3)
    px = pixel_cache(first, preset, tmp_path, progress=False, size=224)
    assert px.shape == (3, 224, 224, 3) and px.dtype == np.uint8
    assert pixel_cache_path(first, preset, tmp_path, 224).is_file()
    assert pixel_cache_path(first, preset, tmp_path, 112) != pixel_cache_path(first, preset, tmp_path, 224)
    assert pixel_cache_path(table, preset, tmp_path, 224) != pixel_cache_path(first, preset, tmp_path, 224)
    with pytest.raises(ValueError, match="112 or 224"):
        pixel_cache_path(first, preset, tmp_path, 160)
