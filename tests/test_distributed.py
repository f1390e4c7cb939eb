"""Distributed runs give what one process gives: heads, lenet and a fine-tuned trunk tail trained by
2 ranks (gloo, 127.0.0.1) equal those of 1 process, and classify-batch under torchrun writes the
same JSON lines; resuming a killed batch finishes it without redoing or losing items."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shoeclass import distributed
from shoeclass.batch import classify_batch, read_items
from shoeclass.checkpoint import save_checkpoint
from shoeclass.models import ModelConfig, build_model, build_trunk

ROOT = Path(__file__).resolve().parents[1]

# Heads on 64 rows of random 16-d "features" with masked labels, a cluster gate and suitability:
# the run itself, written to a file so that plain python and torchrun start the same script.
HEADS_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from safetensors.torch import save_file
    from shoeclass import distributed
    from shoeclass.models import Heads, ModelConfig
    from shoeclass.training.config import TrainConfig
    from shoeclass.training.frozen import fit_heads

    distributed.setup()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    y = (rng.random((64, 14)) < 0.4).astype(np.float32)
    y[rng.random((64, 14)) < 0.3] = 0.5  # masked labels fall unevenly across the ranks' rows
    gate = rng.integers(-1, 3, size=64)
    suit = np.where(rng.random((64, 14)) < 0.5, 0.5, 1.0).astype(np.float32)
    torch.manual_seed(0)
    heads = Heads(16, ModelConfig(n_clusters=3, suitability=True))
    cfg = TrainConfig(batch_size=16, epochs=6, patience=100, lr=1e-2, ema=0.9, seed=3, bf16=False)
    fit_heads(heads, x, y, np.linspace(0.5, 1.5, 64).astype(np.float32), x[:16], y[:16], cfg,
              gate_targets=gate, suit_targets=suit)
    if distributed.is_main():
        save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, sys.argv[1])
    distributed.cleanup()
""")


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(n: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={n}",
            "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", *args]


def test_heads_trained_by_two_ranks_equal_one_process(tmp_path):
    script = tmp_path / "heads.py"
    script.write_text(HEADS_SCRIPT)
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv, _ = [str(script), str(one)], torch.set_num_threads(1)  # as each torchrun rank
    try:
        runpy.run_path(str(script), run_name="__main__")  # one process, here: no torchrun variables
    finally:
        sys.argv, _ = argv, torch.set_num_threads(threads)
    subprocess.run(_torchrun(2, str(script), str(two)), env=_env(), check=True, timeout=120,
                   capture_output=True)
    a, b = load_file(str(one)), load_file(str(two))
    assert set(a) == set(b)
    start = {k: v for k, v in a.items() if k.endswith("weight")}
    assert any(v.abs().sum() > 0 for v in start.values())
    for k in a:
        # Same global batches, gradients averaged by DDP: equal up to float32 summation order (in
        # bf16 the ranks' sums round to other bf16 values now and then, and Adam carries that on).
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between 1 and 2 processes")


# lenet (end to end, on the tiny dataset's photos) and a fine-tuned EfficientNet-Lite0 tail with
# heads (random weights, 16 generated 64-pixel photos, street-like views on) for 2 epochs each: the
# run writes each one's resume state (rank 0 only) into OUT/lenet and OUT/tune.
TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np, torch
    from shoeclass import distributed
    from shoeclass.labels import read_labels
    from shoeclass.metrics import val_score
    from shoeclass.models import Heads, ModelConfig, build_trunk
    from shoeclass.training import lenet
    from shoeclass.training.config import TrainConfig
    from shoeclass.training.finetune import tune_trunk
    from shoeclass.training.frozen import heads_loss

    out, data = Path(sys.argv[1]), sys.argv[2]
    distributed.setup()
    build = lenet.build_model
    def no_dropout(cfg):  # dropout masks are each rank's own: the one thing 2 ranks cannot share
        model = build(cfg)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        return model
    lenet.build_model = no_dropout
    try:
        table = read_labels(data)
        splits = {s: table.subset(table.split == s) for s in ("train", "val", "test")}
        torch.manual_seed(0)
        cfg = TrainConfig(model=ModelConfig(backbone="lenet", lenet_width=8), batch_size=8, epochs=2,
                          patience=100, optimizer="sgd", lr=0.05, seed=5, out=str(out / "lenet"),
                          cache_dir=str(out / "cache"), progress=False)
        lenet.train_lenet(cfg, splits)  # 24 photos: 3 global batches of 8 per epoch
    finally:
        lenet.build_model = build

    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, size=(24, 64, 64, 3), dtype=np.uint8)
    px[:, :8], px[:, -8:] = 255, 255  # a white studio background for the street-like views to replace
    y = (rng.random((24, 14)) < 0.4).astype(np.float32)
    y[rng.random((24, 14)) < 0.3] = 0.5
    gate, suit = rng.integers(-1, 3, size=24), np.where(rng.random((24, 14)) < 0.5, 0.5, 1.0).astype(np.float32)
    torch.manual_seed(0)
    trunk = build_trunk("efficientnet_lite0", None, tuned_blocks=1)
    heads = Heads(trunk.dim, ModelConfig(n_clusters=3, suitability=True))
    cfg = TrainConfig(tune_epochs=2, tune_lr=1e-3, tune_size=48, tune_batch=6, seed=7, wild_aug=0.5,
                      out=str(out / "tune"), progress=False)
    mean, std = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.25)
    tune_trunk(trunk, heads, px[:16], y[:16], np.linspace(0.5, 1.5, 16).astype(np.float32), px[16:], y[16:], cfg,
               mean=mean, std=std, gate=gate[:16], suit=suit[:16], loss_fn=heads_loss, score_fn=val_score,
               wild=np.arange(16) % 2 == 0, backgrounds=px[16:])
    distributed.cleanup()
""")


@pytest.fixture(scope="module")
def trained_by_one_and_two(tiny_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """The out folders of TRAIN_SCRIPT run by one process (here) and by 2 torchrun ranks."""
    tmp = tmp_path_factory.mktemp("ddp_train")
    script = tmp / "train.py"
    script.write_text(TRAIN_SCRIPT)
    one, two = tmp / "one", tmp / "two"
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv, _ = [str(script), str(one), str(tiny_dataset)], torch.set_num_threads(1)  # as each torchrun rank
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv, _ = argv, torch.set_num_threads(threads)
    proc = subprocess.run(_torchrun(2, str(script), str(two), str(tiny_dataset)), env=_env(), timeout=180,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return one, two


def _state(folder: Path, name: str) -> dict:
    return torch.load(folder / name, map_location="cpu", weights_only=True)


def test_lenet_trained_by_two_ranks_equals_one_process(trained_by_one_and_two):
    one, two = trained_by_one_and_two
    caches = sorted(p.name for p in (one / "cache").iterdir())
    assert len(caches) == 3 and sorted(p.name for p in (two / "cache").iterdir()) == caches  # no part left
    for name in caches:  # the pixel caches the 2 ranks decoded into one file each
        assert np.array_equal(np.load(one / "cache" / name), np.load(two / "cache" / name))
    a, b = (_state(f / "lenet", "train_state.pt") for f in trained_by_one_and_two)
    assert a["epoch"] == b["epoch"] == 1
    assert not any(p.name.endswith(".tmp") for p in (two / "lenet").iterdir())
    torch.manual_seed(0)
    start = build_model(ModelConfig(backbone="lenet", lenet_width=8)).state_dict()
    assert (a["model"]["trunk.fc.0.weight"] - start["trunk.fc.0.weight"]).abs().max() > 1e-4  # it trained
    for k, v in a["model"].items():
        # Same global batches and views; batch norm on the global batch's statistics; DDP averages
        # the gradients: the weights agree to ~1e-8 (float32 sums in another order). The running
        # statistics agree to below 1e-4 relative: one process's CPU batch norm accumulates a
        # channels-last batch in float32, the ranks' sums are float64. SGD, not Adam: Adam's first
        # step is lr·sign(g) per weight, so a weight whose gradient is rounding noise (lenet's conv
        # biases, which batch norm cancels: true gradient 0) moves by ±lr by chance, on 1 or 2
        # processes alike (with Adam the weights differ by up to lr here).
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-5, msg=f"lenet {k} differs")
    assert b["model"]["trunk.features.1.num_batches_tracked"] == 6  # 2 epochs of 3 global batches
    assert [h["val_mean_balanced_accuracy"] for h in b["history"]] == [h["val_mean_balanced_accuracy"] for h in a["history"]]


def test_fine_tuning_by_two_ranks_equals_one_process(trained_by_one_and_two):
    a, b = (_state(f / "tune", "tune_state.pt") for f in trained_by_one_and_two)
    assert len(a["scores"]) == len(b["scores"]) == 3
    torch.manual_seed(0)
    start = build_trunk("efficientnet_lite0", None, tuned_blocks=1).tuned_state()
    assert set(a["trunk"]) == set(start) and not torch.equal(a["trunk"]["body._conv_head.weight"],
                                                             start["body._conv_head.weight"])
    for part in ("trunk", "heads"):
        for k, v in a[part].items():
            # As for lenet: the same global batches, views and street-like views on every rank, the
            # loss divided by the global batch's label counts; only summation order differs.
            torch.testing.assert_close(b[part][k], v, rtol=1e-4, atol=1e-5, msg=f"{part} {k} differs")


@pytest.fixture(scope="module")
def lenet_model(tmp_path_factory) -> Path:
    """A small untrained lenet model folder: fast to load, outputs differ from photo to photo."""
    torch.manual_seed(0)
    return save_checkpoint(build_model(ModelConfig(backbone="lenet", lenet_width=8)),
                           tmp_path_factory.mktemp("lenet") / "m", {"backbone": "lenet"})


def _assert_same(a, b, where: str = "") -> None:
    """Equal JSON values; floats equal to 12 significant digits."""
    if isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for k in b:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same(u, v, f"{where}[{i}]")
    elif isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), where
    else:
        assert a == b, where


def _run_one_process(items, out, model):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank: the same arithmetic, the same digits
    try:
        return classify_batch(items, out, model, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_classify_batch_two_ranks_write_the_lines_of_one_process(tiny_dataset, lenet_model, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    items = read_items(tiny_dataset, "item")
    counts = _run_one_process(items, one, lenet_model)
    assert counts == {"items": 36, "skipped": 0, "classified": 36, "errors": 0}
    proc = subprocess.run(_torchrun(2, "-m", "shoeclass.cli", "classify-batch", "--input", str(tiny_dataset),
                                    "--items", "item", "--out", str(two), "--model", str(lenet_model),
                                    "--no-progress"), env=_env(), timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "by 2 process(es)" in proc.stdout
    lines = one.read_text().splitlines()
    assert [json.loads(s)["item"] for s in lines] == [it.id for it in items]  # input order
    # The same lines; the tariff's unrounded "moves" may differ in the last bit (its sums follow
    # set order, which Python's per-process hash seed changes), hence approx on the parsed lines.
    got = two.read_text().splitlines()
    assert len(got) == len(lines)
    for a, b in zip(got, lines):
        _assert_same(json.loads(a), json.loads(b))
    assert not list(tmp_path.glob("*.part*"))  # the ranks' part files are merged and removed


def test_resumed_batch_skips_finished_items_and_redoes_a_cut_line(tiny_dataset, lenet_model, tmp_path):
    items = read_items(tiny_dataset, "item")
    full = tmp_path / "full.jsonl"
    _run_one_process(items, full, lenet_model)
    lines = full.read_text().splitlines()
    out = tmp_path / "out.jsonl"
    # a killed 2-rank run: rank 1's part holds items 1 and 3, the last one cut mid-line
    out.write_text(lines[0] + "\n")
    Path(f"{out}.part1").write_text(lines[1] + "\n" + lines[3][:40])
    counts = _run_one_process(items, out, lenet_model)
    assert counts["skipped"] == 2 and counts["classified"] == 34
    assert out.read_text().splitlines() == lines


def test_shard_and_unshard_are_inverse():
    items = list(range(11))
    parts = [distributed.shard(items, r, 3) for r in range(3)]
    assert parts[1] == [1, 4, 7, 10]
    assert distributed.unshard(parts) == items


def test_item_lists_group_rows_and_refuse_bad_input(tiny_dataset, tmp_path):
    rows = read_items(tiny_dataset / "labels.csv")
    assert len(rows) == 36 and rows[0].id == "images/p000.jpg" and Path(rows[0].photos[0]).is_file()
    folder = read_items(tiny_dataset / "images")
    assert [it.id for it in folder][:2] == ["p000.jpg", "p001.jpg"]
    with pytest.raises(ValueError, match="'sku' not found"):
        read_items(tiny_dataset, "sku")
    bad = tmp_path / "list.csv"
    bad.write_text("photo\na.jpg\n")
    with pytest.raises(ValueError, match="no 'image' column"):
        read_items(bad)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_items(tmp_path / "nope")
