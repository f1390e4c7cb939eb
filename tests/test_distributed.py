"""Distributed runs give what one process gives: heads trained by 2 ranks (gloo, 127.0.0.1) equal
the heads of 1 process, and classify-batch under torchrun writes the same JSON lines; resuming a
killed batch finishes it without redoing or losing items."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shoeclass import distributed
from shoeclass.batch import classify_batch, read_items
from shoeclass.checkpoint import save_checkpoint
from shoeclass.models import ModelConfig, build_model

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
    cfg = TrainConfig(batch_size=16, epochs=6, patience=100, lr=1e-2, ema=0.9, seed=3)
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
        # Same global batches, gradients averaged by DDP: equal up to float32 summation order.
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between 1 and 2 processes")


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
