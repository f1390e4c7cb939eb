"""load_checkpoint refuses model files that are corrupt, pickled or made for other outputs,
with a message that says how to fix it, and never unpickles anything."""
from __future__ import annotations

import hashlib
import json
import pathlib
from pathlib import Path

import pytest
import torch

from shoeclass._card import card_checksum
from shoeclass.attributes import OUTPUT_KEYS
from shoeclass.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shoeclass.models import ModelConfig, build_model


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model(ModelConfig(backbone="lenet", lenet_width=8)), tmp_path / "model",
                           {"backbone": "lenet"})


def edit_meta(folder: Path, reseal: bool = True, **changes) -> None:
    """Change card fields; ``reseal`` recomputes card_sha256, as someone forging a card would, so
    the checks behind the checksum (schema, tensors) are what is tested."""
    meta = json.loads((folder / "model.json").read_text())
    meta.update(changes)
    if reseal:
        meta["card_sha256"] = card_checksum(meta)
    (folder / "model.json").write_text(json.dumps(meta))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(folder: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(folder)
    for f in fragments:
        assert f in str(info.value), (f, str(info.value))
    return str(info.value)


def test_a_saved_model_loads_back_the_same(folder: Path) -> None:
    net, meta = load_checkpoint(folder)
    assert meta["attributes"] == list(OUTPUT_KEYS) and meta["sha256"] == sha256(folder / "model.safetensors")
    torch.manual_seed(0)
    ref = build_model(ModelConfig(backbone="lenet", lenet_width=8)).eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(net(x)["logits"], ref(x)["logits"], rtol=1e-3, atol=1e-4)


def test_checksum_mismatch(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a weight
    (folder / "model.safetensors").write_bytes(bytes(data))
    refused(folder, "sha256 does not match model.json", "Copy the model folder again")


class _Trap:
    """Unpickling this touches a file: proof that a pickle was (or was not) executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_pickle_is_refused_and_never_unpickled(folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    state = build_model(ModelConfig(backbone="lenet", lenet_width=8)).state_dict()
    torch.save({"state": state, "trap": _Trap(marker)}, folder / "model.safetensors")
    edit_meta(folder, sha256=sha256(folder / "model.safetensors"))  # the checksum passes
    refused(folder, "not a safetensors file", "shoeclass never unpickles model files",
            "convert with safetensors.torch.save_file")
    assert not marker.exists()


def test_metadata_for_another_attribute_list(folder: Path) -> None:
    edit_meta(folder, attributes=list(OUTPUT_KEYS[:-1]))
    refused(folder, "this shoeclass expects", "retrain with `shoeclass train`")
    edit_meta(folder, attributes=list(reversed(OUTPUT_KEYS)))  # same names, other order
    refused(folder, "this shoeclass expects")


def test_tensors_that_do_not_fit_the_described_model(folder: Path) -> None:
    meta = json.loads((folder / "model.json").read_text())
    edit_meta(folder, model=dict(meta["model"], lenet_width=16))
    refused(folder, "do not fit the model described in model.json", "Copy both files from the same training run")
    edit_meta(folder, model=dict(meta["model"], layers=3))
    refused(folder, "field model.layers: unknown model setting")


def test_missing_and_broken_files(folder: Path, tmp_path: Path) -> None:
    refused(tmp_path, "no model.json here", "as written by `shoeclass train`")
    (folder / "model.json").write_text("{not json")
    refused(folder, "not valid JSON")
    (folder / "model.json").unlink()
    refused(folder, "no model.json here")


def test_missing_tensor_file(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    refused(folder, "missing; copy the whole model folder")


def test_any_card_edit_is_refused_naming_the_field(folder: Path) -> None:
    meta = json.loads((folder / "model.json").read_text())
    edit_meta(folder, reseal=False, preprocessing=dict(meta["preprocessing"], mean=[0.4, 0.4, 0.4]))
    refused(folder, "field preprocessing.mean changed after the model was saved", "copy the model folder again")
    edit_meta(folder, reseal=False, preprocessing=meta["preprocessing"], decision=None)
    refused(folder, "field decision changed")
    (folder / "model.json").write_text(json.dumps(dict(meta, backbone="vgg19")))
    refused(folder, "field backbone changed")


@pytest.mark.parametrize("field, value, named", [
    ("backbone", "resnet50", "field backbone: unknown backbone 'resnet50'"),
    ("preprocessing", {"size": 224, "pad": "square, white", "brighten": "autocontrast cutoff=1 preserve_tone",
                       "mean": [0.5, 0.5], "std": [0.25, 0.25, 0.25]}, "field preprocessing.mean: must be a list of 3"),
    ("preprocessing", {"size": 300}, "field preprocessing.size"),
    ("decision", {"thresholds": [0.5] * 5}, "field decision.thresholds: must be a list of 14"),
    ("decision", {"thresholds": ["NaN"] * 14}, "field decision.thresholds[0]"),
    ("decision", {"thresholds": [0.0] * 14}, "field decision.thresholds[0]: must be a finite number in (0.0, 1.0]"),
    ("decision", {"thresholds": [0.5] * 14, "fusion": {"priors": [1.5] * 14, "rho": [0.5] * 14, "eps": 1e-6}},
     "field decision.fusion.priors[0]"),
    ("model", {"backbone": "lenet", "dropout": "high"}, "field model.dropout"),
    ("sha256", 42, "field sha256"),
])
def test_a_resealed_card_must_still_pass_the_schema(folder: Path, field: str, value, named: str) -> None:
    edit_meta(folder, **{field: value})
    refused(folder, named)


def test_card_that_is_not_an_object_and_other_versions(folder: Path) -> None:
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps([meta]))
    refused(folder, "a model card is a JSON object, got a list")
    edit_meta_raw = dict(meta, format_version=1)
    (folder / "model.json").write_text(json.dumps(edit_meta_raw))
    refused(folder, "format_version 1, this shoeclass reads format 2", "scripts/reseal_model_card.py")
    (folder / "model.json").write_text(json.dumps(dict(meta, format_version=3)))
    refused(folder, "format_version 3", "written by a newer shoeclass")


def test_reseal_brings_a_format_1_card_to_this_format_without_touching_tensors(folder: Path) -> None:
    from shoeclass.checkpoint import reseal_card

    meta = json.loads((folder / "model.json").read_text())
    old = dict(meta, format_version=1)
    old.pop("card_sha256")
    (folder / "model.json").write_text(json.dumps(old))
    before = sha256(folder / "model.safetensors")
    reseal_card(folder)
    net, again = load_checkpoint(folder)
    assert again["card_sha256"] == meta["card_sha256"] and sha256(folder / "model.safetensors") == before


def test_the_shipped_card_is_sealed() -> None:
    from shoeclass.checkpoint import DEFAULT_MODEL, read_metadata

    meta = read_metadata(DEFAULT_MODEL)
    assert meta["format_version"] == 2 and meta["card_sha256"] == card_checksum(meta)
