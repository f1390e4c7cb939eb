"""An interrupted lenet training keeps a loadable train_state.pt and resumes from it to the end."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shoeclass.training import load_config, train

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "lenet.yaml"

# Runs `shoeclass train` and kills itself (SIGKILL: no cleanup, like a power cut or the OOM
# killer) on the first batch after a train_state.pt exists, i.e. early in epoch 1.
KILLER = """
import os, signal, sys
from pathlib import Path
import shoeclass.training.lenet as ti
state, views = Path(sys.argv[1]) / "train_state.pt", ti.apply_views
def hook(*args):
    if state.exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return views(*args)
ti.apply_views = hook
from shoeclass.cli import main
sys.exit(main(sys.argv[2:]))
"""


def overrides(ds: Path, tmp: Path) -> dict:
    return {"data": str(ds), "epochs": 3, "batch_size": 8, "cache_dir": str(tmp / "cache"),
            "out": str(tmp / "run"), "progress": False}


@pytest.fixture(scope="module")
def killed(tiny_dataset: Path, tmp_path_factory) -> Path:
    """The out folder of a run killed during epoch 1."""
    tmp = tmp_path_factory.mktemp("resume")
    o = overrides(tiny_dataset, tmp)
    cmd = [sys.executable, "-c", KILLER, o["out"], "train", "--config", str(CONFIG), "--data", o["data"],
           "--out", o["out"], "--epochs", "3", "--no-progress",
           "--set", "batch_size=8", f"cache_dir={o['cache_dir']}"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    return tmp


def test_state_after_a_kill_is_loadable(killed: Path) -> None:
    run = killed / "run"
    assert sorted(p.name for p in run.iterdir()) == ["train_state.pt"]  # no model yet, no stray .tmp
    st = torch.load(run / "train_state.pt", map_location="cpu", weights_only=True)
    assert st["epoch"] == 0 and set(st["model"]) == set(st["best_model"])
    assert [h["epoch"] for h in st["history"]] == [0]


def test_training_resumes_from_the_state_and_finishes(killed: Path, tiny_dataset: Path, tmp_path: Path,
                                                      caplog) -> None:
    shutil.copytree(killed / "run", tmp_path / "run")  # the other tests keep the killed run as it is
    cfg = load_config(CONFIG, dict(overrides(tiny_dataset, killed), out=str(tmp_path / "run")))
    with caplog.at_level(logging.INFO, logger="shoeclass.training.lenet"):
        folder = train(cfg)
    assert "resuming lenet training at epoch 1" in caplog.text
    assert "lenet epoch 0 " not in caplog.text  # epoch 0 is not trained again
    meta = json.loads((folder / "model.json").read_text())
    assert [h["epoch"] for h in meta["training"]["history"]["epochs"]] == [0, 1, 2]
    assert not (folder / "train_state.pt").exists()  # a finished model keeps no resume state
    assert all(p.stat().st_mode & 0o004 for p in folder.iterdir())  # readable by everyone


def test_state_written_by_another_config_is_not_resumed(killed: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_state.pt").write_bytes((killed / "run" / "train_state.pt").read_bytes())
    cfg = load_config(CONFIG, dict(overrides(tiny_dataset, killed), out=str(run), lr=0.01))
    with pytest.raises(ValueError, match="written by a different config"):
        train(cfg)


def test_a_save_cut_short_keeps_the_previous_state(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """A crash while writing epoch 1's state leaves epoch 0's state intact."""
    real_save, calls = torch.save, []

    def save(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:
            Path(f).write_bytes(b"PK\x03\x04 half a zip")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        train(load_config(CONFIG, overrides(tiny_dataset, tmp_path)))
    st = torch.load(tmp_path / "run" / "train_state.pt", map_location="cpu", weights_only=True)
    assert st["epoch"] == 0
