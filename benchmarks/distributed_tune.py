"""Fine-tuning under torchrun: one epoch of the shipped fine-tuning on 1 and on 2 processes.

The stage: ``finetune.tune_trunk`` as ``shoeclass train`` runs it for the shipped recipe
(EfficientNet-Lite0 ImageNet trunk, last 8 blocks and the head conv retrained with 512-wide heads,
160 px, batches of 64, AdamW) for one epoch on the first ``--photos`` training photos of
labels.csv, validated on the first ``--val`` validation photos (before and after the epoch, as
training does). The 224-pixel cache of those photos is built once beforehand (decoding is the
pixel cache's stage, not this one). Two ways, each in its own subprocess of 1 thread:

* 1 process (``OMP_NUM_THREADS=1``);
* 2 processes under ``torchrun --standalone --nproc-per-node=2`` (gloo): each rank takes half of
  every global batch of 64, DDP all-reduces the gradients of the 4.5 M trained parameters.

Reported: the stage's wall seconds and CPU seconds per process (process start, ``import torch``
and the trunk build excluded), the CPU time of the 2 processes against the 1 (what sharding and
the all-reduce add), and the largest difference between the tuned tensors of the two ways.

    python benchmarks/distributed_tune.py --photos 256 --val 64     # ~2 min on the 2-core box
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _tables(args: argparse.Namespace):
    import numpy as np

    from shoeclass.labels import read_labels

    table = read_labels(args.data, check_images=False)
    return (table.subset(np.flatnonzero(table.split == "train")[:args.photos]),
            table.subset(np.flatnonzero(table.split == "val")[:args.val]))


def worker(args: argparse.Namespace) -> None:
    """One epoch of fine-tuning (run by the driver, under torchrun or not)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from shoeclass import distributed
    from shoeclass.data import EvalPreset
    from shoeclass.metrics import val_score
    from shoeclass.models import ModelConfig, build_model
    from shoeclass.training.config import TrainConfig
    from shoeclass.training.finetune import tune_trunk
    from shoeclass.training.frozen import heads_loss
    from shoeclass.training.pixels import pixel_cache

    distributed.setup()
    tr, va = _tables(args)
    preset = EvalPreset("efficientnet_lite0")
    pix_tr, pix_va = (pixel_cache(t, preset, args.cache, progress=False, size=224) for t in (tr, va))
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=512, dropout=0.0, tuned_blocks=8), weights="imagenet")
    cfg = TrainConfig(tune_epochs=1, tune_batch=64, tune_size=160, out=args.out, progress=False)
    distributed.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    tune_trunk(model.trunk, model.heads, pix_tr, tr.y, np.ones(len(tr), np.float32), pix_va, va.y, cfg,
               mean=preset.stats()[0], std=preset.stats()[1], loss_fn=heads_loss, score_fn=val_score)
    seconds = time.perf_counter() - t0
    cpu = torch.zeros(distributed.world_size(), dtype=torch.float64)
    cpu[distributed.rank()] = time.process_time() - c0  # excludes time the process was stopped
    cpu = distributed.all_sum(cpu).tolist()
    if distributed.is_main():
        save_file({**{f"trunk.{k}": v.contiguous() for k, v in model.trunk.tuned_state().items()},
                   **{f"heads.{k}": v.contiguous() for k, v in model.heads.state_dict().items()}},
                  str(Path(args.out) / "tuned.safetensors"))
        print(json.dumps({"seconds": seconds, "photos": len(tr), "cpu": cpu}))
    distributed.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--photos", type=int, default=256)
    p.add_argument("--val", type=int, default=64)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    from safetensors.torch import load_file

    from shoeclass.data import EvalPreset
    from shoeclass.training.pixels import pixel_cache

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    ways = {"1 process x 1 thread": [sys.executable], "2 processes x 1 thread": torchrun}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    print(f"fine-tuning, efficientnet_lite0, 8 tuned blocks, 160 px, batch 64, 1 epoch of the first {args.photos} "
          f"train photos of {args.data}; load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    res, tuned = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for t in _tables(args):  # the pixel caches both ways read
            pixel_cache(t, EvalPreset("efficientnet_lite0"), cache, progress=False, size=224)
        for name, cmd in ways.items():
            out = Path(tmp) / name.replace(" ", "_")
            proc = subprocess.run([*cmd, __file__, "--worker", "--data", args.data, "--photos", str(args.photos),
                                   "--val", str(args.val), "--cache", str(cache), "--out", str(out)],
                                  env=env, capture_output=True, text=True, check=True)
            res[name] = r = json.loads(proc.stdout.strip().splitlines()[-1])
            tuned[name] = load_file(str(out / "tuned.safetensors"))
            print(f"  {name:24s} {r['seconds']:7.1f} s wall  CPU s per process {', '.join(f'{c:.1f}' for c in r['cpu'])}"
                  f"  (load average now {os.getloadavg()[0]:.1f})")
    one, two = (res[w] for w in ways)
    print(f"wall speed-up of 2 processes: {one['seconds'] / two['seconds']:.2f}x; "
          f"CPU time of 2 processes against 1: {sum(two['cpu']) / one['cpu'][0]:.2f}x")
    a, b = (tuned[w] for w in ways)
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"largest |difference| of the tuned tensors, 2 processes against 1: {diff:.2e}")


if __name__ == "__main__":
    main()
