"""ONNX export (export.py) and the runtimes that run it (backends.py): the exported graph gives the
PyTorch network's outputs for the shipped model on the example photos at any batch size, the
default runtime keeps its decisions, and ``auto`` falls back to PyTorch when it must."""
import json
import logging
from pathlib import Path

import numpy as np
from scipy.special import logit
import pytest
import torch

from shoeclass.attributes import OUTPUT_KEYS
from shoeclass import backends
from shoeclass.api import Classifier
from shoeclass.backends import OnnxRuntime, TorchRuntime, runtime_available
from shoeclass.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shoeclass.cli import main
from shoeclass.data import EvalPreset
from shoeclass.export import cache_dir, cached_onnx
from shoeclass.images import load_image
from shoeclass.models import ModelConfig, build_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
needs_onnx = pytest.mark.skipif(not runtime_available("onnxruntime"),
                                reason='the onnx extra is not installed (pip install "shoeclass[onnx]")')


@pytest.fixture(scope="module")
def shipped():
    net, meta = load_checkpoint(None)
    return net.to(memory_format=torch.channels_last), meta


@pytest.fixture(scope="module")
def examples() -> torch.Tensor:
    preset = EvalPreset("efficientnet_lite0")
    return torch.stack([preset(load_image(p)) for p in sorted(EXAMPLES.glob("*.jpg"))])  # (6, 3, 224, 224)


@pytest.fixture
def lenet_folder(tmp_path) -> Path:
    torch.manual_seed(0)
    net = build_model(ModelConfig(backbone="lenet", lenet_width=4, n_clusters=3, suitability=True))
    return save_checkpoint(net.eval(), tmp_path / "lenet", {"backbone": "lenet", "trunk": {}})


@needs_onnx
def test_onnx_graph_gives_the_pytorch_outputs_of_the_shipped_model_on_the_example_photos(shipped, examples):
    net, meta = shipped
    want = TorchRuntime(net, bf16=False)(examples)
    onnx = OnnxRuntime(cached_onnx(net, meta))
    got, alone = onnx(examples), onnx(examples[2:3])  # the batch size stays free
    assert set(got) == set(want) == {"logits", "gate", "suitability", "embedding", "features", "material"}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(alone[k], want[k][2:3], rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not runtime_available("openvino"), reason="openvino is not installed")
def test_default_runtime_keeps_the_fp32_decisions_on_the_example_photos(monkeypatch, examples):
    monkeypatch.delenv("SHOECLASS_RUNTIME", raising=False)  # what a user gets (conftest sets torch)
    fp32, auto = Classifier(runtime="torch", bf16=False), Classifier()
    assert auto.info["runtime"].startswith(backends.AUTO_ORDER[0])
    # the photo embeddings (different-products check) agree too: cosine of each photo's two
    a, b = fp32.predict_tensors(examples)["embedding"], auto.predict_tensors(examples)["embedding"]
    # int8 moves them by up to 0.013 of cosine here; the check flags pairs under min_cosine (0.22)
    assert (a * b).sum(1).min() > 0.98
    for photo in sorted(EXAMPLES.glob("*.jpg")):
        a, b = fp32.classify(photo).to_dict(), auto.classify(photo).to_dict()
        thr = dict(zip(OUTPUT_KEYS, fp32.thresholds))
        for k in OUTPUT_KEYS:  # a decision may differ only where fp32 itself is on the fence
            if a["decisions"][k] != b["decisions"][k]:
                if k.startswith("height_"):  # one height is chosen by its log-odds margin
                    m = sorted((logit(a["attributes"][h]) - logit(thr[h]) for h in OUTPUT_KEYS
                                if h.startswith("height_")), reverse=True)
                    assert m[0] - m[1] < 0.25, (photo.name, k)
                else:
                    assert abs(a["attributes"][k] - thr[k]) < 0.05, (photo.name, k)
        assert b["model"]["runtime"] == auto.info["runtime"]
        # int8 (the shipped graph): |p - p_fp32| over the 48,734 test outputs has mean 0.005, 99.9th
        # percentile 0.17 (bf16: 0.05), largest where the fp32 probability is mid-way
        assert np.abs(np.array(a["matrix"]) - np.array(b["matrix"])).max() < 0.2


@needs_onnx
def test_cli_export_writes_a_graph_for_any_model_folder(lenet_folder, tmp_path, capsys):
    assert main(["export", "--model", str(lenet_folder), "--out", str(tmp_path / "out" / "m.onnx")]) == 0
    assert "m.onnx" in capsys.readouterr().out
    net, _ = load_checkpoint(lenet_folder)
    x = torch.rand(5, 3, 224, 224)
    want, got = TorchRuntime(net, bf16=False)(x), OnnxRuntime(tmp_path / "out" / "m.onnx")(x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=1e-4)


@needs_onnx
def test_export_is_cached_once_per_model_outside_the_model_folder(lenet_folder):
    net, meta = load_checkpoint(lenet_folder)
    first = cached_onnx(net, meta)
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(net, meta) == first and first.stat().st_mtime_ns == stamp
    assert cache_dir() in first.parents and meta["sha256"][:32] in str(first)
    assert sorted(p.name for p in lenet_folder.iterdir()) == ["model.json", "model.safetensors"]


def test_auto_falls_back_to_pytorch_without_the_packages(lenet_folder, monkeypatch):
    monkeypatch.setattr(backends, "runtime_available", lambda name: name == "torch")
    assert Classifier(lenet_folder, runtime="auto").info["runtime"].startswith("torch")
    with pytest.raises(ValueError, match="pip install"):
        Classifier(lenet_folder, runtime="onnxruntime")
    with pytest.raises(ValueError, match="runtime must be one of"):
        Classifier(lenet_folder, runtime="tensorrt")


@needs_onnx
def test_auto_falls_back_to_pytorch_when_the_export_fails(lenet_folder, monkeypatch, caplog):
    import shoeclass.export

    def broken(net, meta):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(shoeclass.export, "cached_onnx", broken)
    with caplog.at_level(logging.WARNING):
        clf = Classifier(lenet_folder, runtime="auto")
    assert clf.info["runtime"].startswith("torch") and "exporter crashed" in caplog.text
    photo = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # not blank: it has content
    assert clf.classify(load_image(photo)).probs is not None


needs_openvino = pytest.mark.skipif(not (runtime_available("openvino") and runtime_available("onnxruntime")),
                                    reason='the onnx extra is not installed (pip install "shoeclass[onnx]")')


@needs_openvino
def test_quantize_seals_an_int8_graph_that_openvino_runs_in_place_of_the_float_one(lenet_folder, tiny_dataset, capsys):
    assert main(["quantize", "--model", str(lenet_folder), "--data", str(tiny_dataset), "--photos", "6"]) == 0
    assert "model.int8.onnx" in capsys.readouterr().out
    meta = json.loads((lenet_folder / "model.json").read_text())
    assert meta["int8"]["calibration"] == {"split": "val", "photos": 6, "seed": 0, "ranges": "min-max"}
    int8, fp32 = Classifier(lenet_folder, runtime="openvino"), Classifier(lenet_folder, runtime="torch", bf16=False)
    assert int8.info["runtime"] == "openvino int8"
    assert Classifier(lenet_folder, runtime="openvino", bf16=False).info["runtime"] == "openvino fp32"
    x = torch.stack([EvalPreset("lenet")(load_image(p)) for p in sorted((tiny_dataset / "images").glob("*.jpg"))[-6:]])
    a, b = fp32.predict_tensors(x), int8.predict_tensors(x)
    np.testing.assert_allclose(b["probs"], a["probs"], atol=0.05)  # int8 rounding, not another network


@needs_openvino
def test_an_int8_graph_that_fails_its_checksum_is_refused_by_name(lenet_folder, tiny_dataset, caplog):
    from shoeclass.training.quantize import quantize_model

    quantize_model(lenet_folder, tiny_dataset, photos=4)
    with (lenet_folder / "model.int8.onnx").open("ab") as fh:
        fh.write(b"\0")  # one byte more: another graph than the card sealed
    with pytest.raises(CheckpointError, match="model.int8.onnx.*sha256"):
        Classifier(lenet_folder, runtime="openvino")
    with caplog.at_level(logging.WARNING):  # auto warns and runs OpenVINO on the float graph
        clf = Classifier(lenet_folder, runtime="auto")
    assert "model.int8.onnx" in caplog.text and clf.info["runtime"] in ("openvino bf16", "openvino fp32")
