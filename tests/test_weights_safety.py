"""load_checkpoint refuses model files that are corrupt, pickled or made for other outputs,
with a message that says how to fix it, and never unpickles anything."""
from __future__ import annotations

import hashlib
import json
import pathlib
from pathlib import Path

import pytest
import torch

from shoeclass.attributes import OUTPUT_KEYS
from shoeclass.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shoeclass.models import ModelConfig, build_model


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model(ModelConfig(backbone="lenet", lenet_width=8)), tmp_path / "model",
                           {"backbone": "lenet"})


def edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "model.json").read_text())
    meta.update(changes)
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
    refused(folder, "do not fit the model described in model.json")


def test_missing_and_broken_files(folder: Path, tmp_path: Path) -> None:
    refused(tmp_path, "no model.json here", "as written by `shoeclass train`")
    (folder / "model.json").write_text("{not json")
    refused(folder, "not valid JSON")
    (folder / "model.json").unlink()
    refused(folder, "no model.json here")


def test_missing_tensor_file(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    refused(folder, "missing; copy the whole model folder")
