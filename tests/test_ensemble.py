"""Ensembles of fine-tuned models (ensemble.py): the shared stem gives each member's own outputs,
mirror images are averaged in, the float16 folder loads back, the config trains, reuses and
refuses members, and a material tail branches off the reference trunk."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from shoeclass import classify_images
from shoeclass.api import Classifier
from shoeclass.checkpoint import load_checkpoint, save_checkpoint
from shoeclass.images import load_image
from shoeclass.materials import MATERIAL_CLASSES
from shoeclass.models import EnsembleNet, MaterialTail, ModelConfig, build_model, build_trunk
from shoeclass.training import train_ensemble
from shoeclass.training.materials import fit_materials

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "efficientnet_lite0.yaml"


def _member(seed: int, tuned_blocks: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_model(ModelConfig(backbone="efficientnet_lite0", tuned_blocks=tuned_blocks, n_clusters=3,
                                  suitability=True), weights="imagenet")
    with torch.no_grad():  # members differ in their tails and heads, as after fine-tuning
        for p in [*net.trunk.tail_modules()[0].parameters(), *net.heads.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def members():
    return [_member(0), _member(1)]


def test_ensemble_averages_each_members_own_outputs_over_the_photo_and_its_mirror(members):
    x = torch.rand(3, 3, 224, 224)
    with torch.inference_mode():
        got = EnsembleNet(members, flip=True)(x)
        want = [m(v) for m in members for v in (x, x.flip(3))]
    assert set(got) == {"logits", "gate", "suitability", "features"} and got["logits"].shape == (3, 14)
    for k in ("logits", "gate", "suitability"):
        torch.testing.assert_close(got[k], torch.stack([w[k] for w in want]).mean(0), rtol=1e-4, atol=1e-5)
    # features: each member's trunk features as its heads standardise them, side by side, per view
    per_view = [torch.cat([(want[2 * i + v]["embedding"] - m.heads.mu) / m.heads.sigma for i, m in enumerate(members)], 1)
                for v in (0, 1)]
    torch.testing.assert_close(got["features"], (per_view[0] + per_view[1]) / 2, rtol=1e-4, atol=1e-4)


def test_flipped_ensemble_does_not_care_which_way_the_shoe_points(members):
    x = torch.rand(2, 3, 224, 224)
    net = EnsembleNet(members, flip=True)
    with torch.inference_mode():
        torch.testing.assert_close(net(x)["logits"], net(x.flip(3))["logits"], rtol=1e-4, atol=1e-5)
        plain = EnsembleNet(members, flip=False)
        assert not torch.allclose(plain(x)["logits"], plain(x.flip(3))["logits"])


def test_members_must_share_backbone_and_tuned_blocks(members):
    with pytest.raises(ValueError, match="tuned_blocks"):
        EnsembleNet([members[0], _member(2, tuned_blocks=2)])
    frozen = build_model(ModelConfig(backbone="efficientnet_lite0", n_clusters=3, suitability=True), weights="imagenet")
    with pytest.raises(ValueError, match="tuned_blocks"):
        EnsembleNet([frozen])
    with pytest.raises(ValueError, match="at least one"):
        EnsembleNet([])


def test_ensemble_folder_stores_float16_and_loads_back(members, tmp_path):
    net = EnsembleNet(members, flip=True)
    save_checkpoint(net, tmp_path / "ens", {"backbone": "efficientnet_lite0", "trunk": {}})
    state = load_file(str(tmp_path / "ens" / "model.safetensors"))
    assert {k.split(".")[1] for k in state} == {"0", "1"}
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    loaded, meta = load_checkpoint(tmp_path / "ens")
    assert isinstance(loaded, EnsembleNet) and loaded.flip and len(loaded.members) == 2
    assert meta["ensemble"]["members"][1]["tuned_blocks"] == 1
    first, second = (m.trunk.body for m in loaded.members)  # one frozen stem in memory, shared
    assert second._conv_stem is first._conv_stem and second._blocks[0] is first._blocks[0]
    assert second._blocks[-1] is not first._blocks[-1]  # each member's own tuned tail
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x)["logits"], net(x)["logits"], rtol=1e-2, atol=1e-2)


@pytest.fixture(scope="module")
def ensemble_config(tiny_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ens")
    cfg = tmp / "ensemble.yaml"
    cfg.write_text(f"base: {CONFIG}\nout: {tmp / 'out'}\nflip: true\nmembers:\n  - {{}}\n  - {{seed: 1}}\n")
    over = {"data": str(tiny_dataset), "epochs": 1, "cache_dir": str(tmp / "cache"), "progress": False,
            "aug_views": 1, "model.tuned_blocks": 1, "tune_epochs": 1, "tune_batch": 8}
    return cfg, over, train_ensemble(cfg, over)


def test_ensemble_config_trains_members_and_writes_a_usable_model(ensemble_config, tiny_dataset):
    _, _, folder = ensemble_config
    meta = json.loads((folder / "model.json").read_text())
    assert [m["config"]["seed"] for m in meta["training"]["ensemble_of"]] == [0, 1]
    assert meta["ensemble"]["flip"] is True and len(meta["decision"]["thresholds"]) == 14
    assert np.isfinite(meta["metrics"]["test"]["ece"])
    assert "members" in yaml.safe_load((folder / "config.yaml").read_text())
    d = classify_images([str(tiny_dataset / "images" / "p000.jpg"), b"not a photo"], model=folder).to_dict()
    assert all(0.0 <= v <= 1.0 for v in d["attributes"].values())
    assert d["photos"][1]["error"] and d["photos"][0]["attributes"]
    assert d["model"]["members"] == 2 and d["model"]["mirror"] is True


def test_members_already_trained_are_reused_and_changed_settings_refused(ensemble_config):
    cfg, over, folder = ensemble_config
    member = folder / "members" / "0" / "model.safetensors"
    before = member.stat().st_mtime_ns
    train_ensemble(cfg, over)
    assert member.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="other settings"):
        train_ensemble(cfg, {**over, "tune_lr": 1e-3})


def test_ensemble_config_without_members_is_refused(tmp_path):
    cfg = tmp_path / "e.yaml"
    cfg.write_text(f"base: {CONFIG}\nmembers: []\n")
    with pytest.raises(ValueError, match="members"):
        train_ensemble(cfg)


def test_material_tail_branches_off_the_reference_and_stores_only_what_tuning_changed():
    ref = build_trunk("efficientnet_lite0", "imagenet", "avgmax", tuned_blocks=8)
    parts = {"upper": ["leather", "textile"], "sole": ["rubber_plastics", "leather"]}
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        h = ref.blocks(ref.stem(x), ref.cut, 11)
        untuned = MaterialTail(ref, 11, parts, rank=2).eval()
        # an untuned copy sees what the embedding's tail sees from block 11 on
        torch.testing.assert_close(untuned.features(h), ref.tail(h, start=11))
        torch.testing.assert_close(ref.tail(h, start=11), ref.tail(ref.stem(x)))
    torch.manual_seed(0)
    stored = {f"{n}.{f}": torch.randn(*((2, c.in_channels) if f == "a" else (c.out_channels, 2))) * 0.01
              for n, c in untuned.pointwise().items() for f in "ab"}
    stored.update({n: torch.randn_like(p) for n, p in untuned.named_parameters() if n in untuned.own_names()})
    tuned = MaterialTail(ref, 11, parts, rank=2, stored=stored)
    conv = "blocks.1._expand_conv"
    want = ref.body._blocks[12]._expand_conv.weight + (stored[f"{conv}.b"] @ stored[f"{conv}.a"]).view(-1, 192, 1, 1)
    torch.testing.assert_close(tuned.get_submodule(conv).weight, want)
    assert all(v.dim() <= 2 for v in stored.values())  # deltas, affines, outputs: never a whole conv
    with pytest.raises(ValueError, match="do not fit"):
        MaterialTail(ref, 11, parts, rank=2, stored={k: v for k, v in stored.items() if k != f"{conv}.a"})
    with pytest.raises(ValueError, match="first block"):
        MaterialTail(ref, 3, parts, rank=2)


def test_fit_materials_tunes_a_tail_that_leaves_the_attributes_and_embedding_as_they_were(
        ensemble_config, tiny_dataset, tmp_path):
    _, _, trained = ensemble_config
    folder, data = tmp_path / "model", tmp_path / "data"
    shutil.copytree(trained, folder, ignore=shutil.ignore_patterns("members"))
    shutil.copytree(tiny_dataset, data)
    with (data / "texts.csv").open("w", newline="") as fh:  # boots: leather on rubber; sandals: canvas on leather
        csv.writer(fh).writerows([("image", "text")] + [
            (f"images/p{i:03d}.jpg", ["Leather upper, rubber outsole", "Canvas upper, leather sole"][i % 3])
            for i in range(36) if i % 3 < 2])
    photos = [str(data / "images" / f"p{i:03d}.jpg") for i in (0, 1, 30, 31)]
    untuned = Classifier(folder)
    before = untuned.predict_tensors(torch.stack([untuned.preset(load_image(p)) for p in photos]))
    section = fit_materials(folder, data, cache_dir=tmp_path / "cache", progress=False, min_train=5, tail_epochs=2)
    meta = json.loads((folder / "model.json").read_text())
    assert meta["ensemble"]["material_tail"]["parts"] == {"upper": ["leather", "textile"],
                                                          "sole": ["rubber_plastics", "leather"]}
    assert section["tail"] is True and section["tail_training"]["epoch"] in (1, 2)
    clf = Classifier(folder)
    after = clf.predict_tensors(torch.stack([clf.preset(load_image(p)) for p in photos]))
    assert after["material"].shape == (4, 4)  # two classes of each part, side by side
    for k in ("logits", "embedding"):  # members and the embedding's tail untouched
        np.testing.assert_allclose(after[k], before[k], rtol=1e-4, atol=1e-4)
    for part in ("upper", "sole"):
        np.testing.assert_allclose(after[f"materials_{part}"].sum(1), 1, rtol=1e-6)
    state = load_file(str(folder / "model.safetensors"))
    assert all(v.dim() <= 2 for k, v in state.items() if k.startswith("material_tail."))
    d = classify_images(photos[:2], model=folder).to_dict()
    assert set(d["materials"]["upper"]) == set(MATERIAL_CLASSES["upper"])
